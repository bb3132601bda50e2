from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.resnetv1b import resnet50_v1s

from segmaker import models
from segmaker.errors import UserError
from segmaker.models import (
    SegmentationInference,
    build_network,
    find_pretrained_weights,
    load_backbone_weights,
    load_parameters,
    parameters_by_name,
    pretrained_file_name,
    working_size_for,
)

SIZE = 64
NUM_CLASSES = 3


def random_images(*shapes):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


def seeded_network(algorithm, *, size=SIZE, aux=True):
    mx.random.seed(1)
    return build_network(algorithm, "resnet50", NUM_CLASSES, size=size, aux=aux)


@pytest.fixture(scope="module")
def shared_network():
    """Networks that tests only read or run, never load into: built once, as building is the slow part."""
    built = {}

    def get(algorithm, aux=True):
        if (algorithm, aux) not in built:
            built[algorithm, aux] = seeded_network(algorithm, aux=aux)
        return built[algorithm, aux]

    return get


def array(net, name):
    return parameters_by_name(net)[name].data().asnumpy()


@pytest.mark.parametrize("algorithm", ["fcn", "psp", "deeplab"])
def test_build_network_outputs_main_and_aux_heads_at_its_size(algorithm, shared_network):
    net = shared_network(algorithm)
    outputs = net(mx.nd.zeros((2, 3, SIZE, SIZE)))
    assert [o.shape for o in outputs] == [(2, NUM_CLASSES, SIZE, SIZE)] * 2


def test_build_network_without_aux_head(shared_network):
    net = shared_network("fcn", aux=False)
    assert not any(name.startswith("auxlayer") for name in parameters_by_name(net))
    assert len(net(mx.nd.zeros((1, 3, SIZE, SIZE)))) == 1


def test_build_network_resnet101_has_23_blocks_in_layer3():
    net = build_network("fcn", "resnet101", NUM_CLASSES, size=32, aux=False)
    assert len(net.layer3) == 23


def test_build_network_with_syncbn_uses_sync_batchnorm_everywhere():
    net = build_network("deeplab", "resnet50", NUM_CLASSES, size=32, syncbn_devices=2)
    norms = [b for b in _blocks(net) if isinstance(b, mx.gluon.nn.BatchNorm)]
    assert norms and all(isinstance(b, mx.gluon.contrib.nn.SyncBatchNorm) for b in norms)
    assert all(b._kwargs["ndev"] == 2 for b in norms)


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def test_build_network_is_reproducible_with_a_seed(shared_network):
    first, second = shared_network("fcn"), seeded_network("fcn")
    np.testing.assert_array_equal(
        array(first, "layer1.0.conv1.weight"), array(second, "layer1.0.conv1.weight")
    )


def test_build_network_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown algorithm 'unet'"):
        build_network("unet", "resnet50", 2, size=32)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_network("fcn", "resnet-50", 2, size=32)


def test_working_size_rounds_base_size_up_to_multiple_of_8():
    assert working_size_for(520) == 520
    assert working_size_for(61) == 64


# --- pretrained weights -------------------------------------------------------------------------------


def test_pretrained_file_names_are_gluoncv_model_store_names():
    assert pretrained_file_name("resnet50") == "resnet50_v1s-25a187fa.params"
    assert pretrained_file_name("resnet101") == "resnet101_v1s-bd93a83c.params"


def test_find_pretrained_prefers_the_channel(tmp_path):
    channel, home = tmp_path / "pretrained", tmp_path / "mxnet"
    for folder in (channel, home / "models"):
        folder.mkdir(parents=True)
        (folder / "resnet50_v1s-25a187fa.params").write_bytes(b"x")
    found = find_pretrained_weights("resnet50", pretrained_dir=channel, mxnet_home=home)
    assert found == channel / "resnet50_v1s-25a187fa.params"


def test_find_pretrained_falls_back_to_mxnet_home(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resnet101_v1s-bd93a83c.params").write_bytes(b"x")
    found = find_pretrained_weights("resnet101", pretrained_dir=tmp_path / "absent", mxnet_home=tmp_path)
    assert found == tmp_path / "models" / "resnet101_v1s-bd93a83c.params"


def test_find_pretrained_accepts_a_renamed_file_in_the_channel(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "resnet50_v1s-mine.params").write_bytes(b"x")
    found = find_pretrained_weights("resnet50", pretrained_dir=tmp_path, mxnet_home=tmp_path / "home")
    assert found.name == "resnet50_v1s-mine.params"


def test_find_pretrained_names_every_place_and_the_fixes(tmp_path):
    with pytest.raises(UserError) as raised:
        find_pretrained_weights("resnet50", pretrained_dir=tmp_path / "chan", mxnet_home=tmp_path / "home")
    message = str(raised.value)
    for expected in (
        "resnet50_v1s-25a187fa.params",
        str(tmp_path / "chan"),
        str(tmp_path / "home" / "models"),
        "'pretrained' channel",
        "use_pretrained_model=False",
    ):
        assert expected in message


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory) -> Path:
    """A resnet50_v1s parameter file like the model store's: random values, the same names and shapes."""
    mx.random.seed(7)
    resnet = resnet50_v1s(pretrained=False)
    resnet.initialize(mx.init.Normal(0.5))
    resnet(mx.nd.zeros((1, 3, 32, 32)))
    path = tmp_path_factory.mktemp("pretrained") / pretrained_file_name("resnet50")
    resnet.save_parameters(str(path))
    return path


def test_load_backbone_weights_fills_every_backbone_parameter(resnet50_file):
    net = seeded_network("psp")
    head_before = array(net, "head.block.0.weight")
    load_backbone_weights(net, resnet50_file)
    saved = mx.nd.load(str(resnet50_file))
    backbone = [n for n in parameters_by_name(net) if n.split(".")[0] in models.BACKBONE_BLOCKS]
    assert len(backbone) == len(saved) - 2  # everything but the classifier fc.weight / fc.bias
    for name in backbone:
        np.testing.assert_array_equal(array(net, name), saved[name].asnumpy())
    np.testing.assert_array_equal(array(net, "head.block.0.weight"), head_before)


def test_load_backbone_weights_refuses_wrong_shapes(resnet50_file, tmp_path, shared_network):
    arrays = mx.nd.load(str(resnet50_file))
    arrays["layer2.0.conv1.weight"] = mx.nd.zeros((3, 3, 1, 1))
    bad = tmp_path / "resnet50_v1s-bad.params"
    mx.nd.save(str(bad), arrays)
    with pytest.raises(UserError, match=r"resnet50_v1s-bad.params .*layer2.0.conv1.weight is \(3, 3, 1, 1\)"):
        load_backbone_weights(shared_network("fcn"), bad)


def test_load_backbone_weights_refuses_missing_parameters(resnet50_file, tmp_path, shared_network):
    arrays = mx.nd.load(str(resnet50_file))
    del arrays["layer4.2.bn3.running_var"]
    bad = tmp_path / "partial.params"
    mx.nd.save(str(bad), arrays)
    with pytest.raises(UserError, match="partial.params .*lacks 1 .*layer4.2.bn3.running_var"):
        load_backbone_weights(shared_network("fcn"), bad)


def test_load_backbone_weights_refuses_a_file_that_is_no_parameter_file(tmp_path, shared_network):
    bad = tmp_path / "resnet50_v1s-junk.params"
    bad.write_bytes(b"not an mxnet file")
    with pytest.raises(UserError, match="cannot read parameter file .*resnet50_v1s-junk.params"):
        load_backbone_weights(shared_network("fcn"), bad)


# --- copying and loading whole networks ----------------------------------------------------------------


def test_load_parameters_between_sizes_and_without_aux(tmp_path):
    """What validation does each epoch: a training net's file (crop size, aux head) into the working-size
    net without the aux head."""
    training = seeded_network("deeplab", size=32, aux=True)
    training.save_parameters(str(tmp_path / "training.params"))
    mx.random.seed(99)
    inference = build_network("deeplab", "resnet50", NUM_CLASSES, size=SIZE, aux=False)
    load_parameters(inference, tmp_path / "training.params")
    for name in parameters_by_name(inference):
        np.testing.assert_array_equal(array(inference, name), array(training, name))


def test_load_parameters_refuses_another_architecture(tmp_path, shared_network):
    shared_network("fcn").save_parameters(str(tmp_path / "fcn.params"))
    with pytest.raises(UserError, match=r"fcn.params does not fit the network: it lacks \d+ .*first: head\."):
        load_parameters(shared_network("psp"), tmp_path / "fcn.params")


def test_load_parameters_refuses_a_file_that_is_no_parameter_file(tmp_path, shared_network):
    bad = tmp_path / "model_best.params"
    bad.write_bytes(b"\x12\x01\x00\x00\x00\x00\x00\x00 truncated")
    with pytest.raises(UserError, match="cannot read parameter file .*model_best.params"):
        load_parameters(shared_network("fcn"), bad)


def test_load_parameters_skips_aux_head_and_refuses_other_class_counts(tmp_path, shared_network):
    training = shared_network("fcn")
    path = tmp_path / "model_algo-1"
    training.save_parameters(str(path))
    inference = build_network("fcn", "resnet50", NUM_CLASSES, size=SIZE, aux=False)
    load_parameters(inference, path)
    np.testing.assert_array_equal(
        array(inference, "head.block.4.weight"), array(training, "head.block.4.weight")
    )
    other = build_network("fcn", "resnet50", NUM_CLASSES + 1, size=SIZE, aux=False)
    with pytest.raises(UserError, match="model_algo-1 does not fit .*head.block.4"):
        load_parameters(other, path)


# --- full-resolution inference -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["psp", "deeplab"])
def test_inference_returns_masks_at_any_input_size(algorithm, shared_network):
    engine = SegmentationInference(shared_network(algorithm), SIZE, [mx.cpu()])
    images = random_images((37, 91), (300, 120), (64, 64))
    masks = engine.predict_masks(images)
    assert [m.shape for m in masks] == [(37, 91), (300, 120), (64, 64)]
    assert all(m.dtype == np.uint8 and m.max() < NUM_CLASSES for m in masks)
    probabilities = engine.predict_probabilities(images[:2])
    assert [p.shape for p in probabilities] == [(NUM_CLASSES, 37, 91), (NUM_CLASSES, 300, 120)]
    np.testing.assert_allclose(probabilities[0].sum(axis=0), 1.0, rtol=1e-5)


def test_fcn_masks_are_argmax_of_probabilities(shared_network):
    engine = SegmentationInference(shared_network("fcn"), SIZE, [mx.cpu()])
    images = random_images((50, 33), (20, 140))
    masks = engine.predict_masks(images)
    for mask, probabilities in zip(masks, engine.predict_probabilities(images)):
        np.testing.assert_array_equal(mask, probabilities.argmax(axis=0))
    assert len(np.unique(masks[0])) > 1, "a constant mask would make this comparison meaningless"


def test_two_contexts_give_the_same_result_as_one(shared_network):
    net = shared_network("deeplab")
    images = random_images((40, 70), (90, 30), (64, 20))
    single = SegmentationInference(net, SIZE, [mx.cpu(0)]).predict_probabilities(images)
    double = SegmentationInference(net, SIZE, [mx.cpu(0), mx.cpu(1)]).predict_probabilities(images)
    for one, two in zip(single, double):
        np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-6)


def test_masks_resized_class_group_by_class_group_are_the_same(monkeypatch, shared_network):
    engine = SegmentationInference(shared_network("fcn"), SIZE, [mx.cpu()])
    images = random_images((45, 77))
    whole = engine.predict_masks(images)[0]
    monkeypatch.setattr(models, "MAX_RESIZED_VALUES", 45 * 77)  # one class per group
    np.testing.assert_array_equal(engine.predict_masks(images)[0], whole)


def test_inference_of_an_image_at_working_size_is_the_networks_own_output(shared_network):
    """An image already at working size is neither resized nor padded: its logits are the network's own."""
    net = shared_network("fcn", aux=False)
    image = random_images((SIZE, SIZE))[0]
    engine = SegmentationInference(net, SIZE, [mx.cpu()])
    expected = net(mx.nd.array(models.normalize(image)[None]))[0][0]
    np.testing.assert_allclose(
        engine.predict_probabilities([image])[0],
        mx.nd.softmax(expected, axis=0).asnumpy(),
        rtol=1e-4,
        atol=1e-6,
    )


def test_inference_refuses_sizes_that_are_no_multiple_of_8(shared_network):
    with pytest.raises(ValueError, match="multiple of 8"):
        SegmentationInference(shared_network("fcn"), 60, [mx.cpu()])


def test_parameters_loaded_after_the_engine_is_built_are_used(tmp_path, shared_network):
    """Validation builds its engine once and loads the training weights in every epoch."""
    mx.random.seed(42)
    target = build_network("fcn", "resnet50", NUM_CLASSES, size=SIZE, aux=False)
    engine = SegmentationInference(target, SIZE, [mx.cpu()])
    image = random_images((SIZE, SIZE))[0]
    before = engine.predict_probabilities([image])[0]
    source = shared_network("fcn")
    source.save_parameters(str(tmp_path / "source.params"))
    load_parameters(target, tmp_path / "source.params")
    expected = mx.nd.softmax(source(mx.nd.array(models.normalize(image)[None]))[0][0], axis=0).asnumpy()
    after = engine.predict_probabilities([image])[0]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)

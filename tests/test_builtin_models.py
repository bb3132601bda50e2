"""The built-in algorithm's model directories: served and trained further as they are; ours load in GluonCV.

The built-in directory is made here with GluonCV's own classes and `save_parameters`, as the built-in
algorithm (GluonCV inside) writes it, with a hyperparams.json of strings as SageMaker passes them.
"""

import contextlib
import io
import json
import tarfile

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import FCN, PSPNet

from segmaker import artifacts
from segmaker.errors import UserError
from segmaker.models import build_network, load_parameters, parameters_by_name
from tests.serving_model import write_tiny_model_dir

SIZE = 32


def gluoncv_net(model_class, seed: int, size: int = SIZE, aux: bool = True):
    """A network as a GluonCV user (or the built-in) builds it, with random initial values."""
    mx.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        net = model_class(3, backbone="resnet50", aux=aux, pretrained_base=False, crop_size=size,
                          base_size=size)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 3, size, size)))  # shapes known, values drawn
    return net


def main_logits(net, array: np.ndarray) -> np.ndarray:
    output = net(mx.nd.array(array[np.newaxis]))
    return (output[0] if isinstance(output, (list, tuple)) else output)[0].asnumpy()


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("builtin")
    best = gluoncv_net(PSPNet, seed=5)
    best.save_parameters(str(directory / "model_best.params"))
    gluoncv_net(PSPNet, seed=6).save_parameters(str(directory / "model_algo-1"))
    (directory / "hyperparams.json").write_text(json.dumps({
        "algorithm": "psp", "backbone": "resnet-50", "num_classes": "3", "base_size": "30",
        "crop_size": "24", "epochs": "10", "use_pretrained_model": "True", "_tuning_objective_metric": "",
    }))
    return directory, best


def test_the_manifest_is_inferred_from_hyperparams(builtin_dir):
    directory, _ = builtin_dir
    model = artifacts.read_model_dir(directory)
    manifest = model.manifest
    assert (manifest.algorithm, manifest.backbone, manifest.num_classes) == ("psp", "resnet50", 3)
    assert manifest.working_size == 32  # max(base_size 30, crop_size 24) rounded up to a multiple of 8
    assert model.manifest.names() == ["class_0", "class_1", "class_2"]
    assert model.params_file("best").name == "model_best.params"


def test_a_builtin_model_serves_what_gluoncv_computes(builtin_dir, tmp_path):
    directory, best = builtin_dir
    with tarfile.open(str(tmp_path / "model.tar.gz"), "w:gz", compresslevel=1) as archive:
        for name in ("hyperparams.json", "model_best.params"):
            archive.add(str(directory / name), arcname=name)
    engine = artifacts.load_inference(artifacts.read_model_dir(tmp_path / "model.tar.gz"), [mx.cpu()])
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((3, SIZE, SIZE)).astype(np.float32)
    ours = engine.forward([inputs])[0].asnumpy()
    np.testing.assert_allclose(ours, main_logits(best, inputs), rtol=1e-4, atol=1e-4)


def test_a_builtin_model_is_served_over_http(builtin_dir):
    from segmaker.serving.app import create_app
    from segmaker.serving.predictor import load_predictor
    from tests.serving_model import image_bytes

    directory, _ = builtin_dir
    client = create_app(load_predictor(directory)).test_client()
    response = client.post("/invocations", data=image_bytes(45, 70), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200


def test_a_builtin_model_seeds_incremental_training(builtin_dir):
    directory, _ = builtin_dir
    model = artifacts.read_model_dir(directory)
    artifacts.check_compatible(model, "psp", "resnet50", 3)
    with pytest.raises(UserError, match="num_classes is 3 in the model but 4"):
        artifacts.check_compatible(model, "psp", "resnet50", 4)
    training_net = build_network("psp", "resnet50", 3, size=24, aux=True)
    load_parameters(training_net, model.params_file("best"))  # aux head included: the built-in trains with it
    saved = mx.nd.load(str(model.params_file("best")))
    for name, param in parameters_by_name(training_net).items():
        np.testing.assert_array_equal(param.data().asnumpy(), saved[name].asnumpy())


@pytest.mark.parametrize("hyperparameters, message", [
    ({"algorithm": "psp", "backbone": "resnet-50"}, "'num_classes' is missing"),
    ({"num_classes": "3", "algorithm": "unet"}, "'algorithm' 'unet'"),
    ({"num_classes": "3", "backbone": "vgg"}, "'backbone' 'vgg'"),
    ({"num_classes": "three"}, "'num_classes' must be a positive whole number"),
])
def test_bad_builtin_hyperparams_name_the_file_and_key(tmp_path, hyperparameters, message):
    (tmp_path / "hyperparams.json").write_text(json.dumps(hyperparameters))
    (tmp_path / "model_algo-1").write_bytes(b"")
    with pytest.raises(UserError, match=message) as caught:
        artifacts.read_model_dir(tmp_path)
    assert "hyperparams.json" in str(caught.value)


def test_our_model_loads_in_gluoncvs_own_class(tmp_path):
    """The other direction: users load our model_algo-1 / model_best.params as they load the built-in's."""
    model_dir = write_tiny_model_dir(tmp_path / "model", "fcn", size=SIZE, onnx=False)
    engine = artifacts.load_inference(artifacts.read_model_dir(model_dir), [mx.cpu()])
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = FCN(3, backbone="resnet50", pretrained_base=False, crop_size=SIZE, base_size=SIZE)
    theirs.load_parameters(str(model_dir / "model_best.params"))  # strict: no missing, no extra names
    inputs = np.random.default_rng(1).standard_normal((3, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(engine.forward([inputs])[0].asnumpy(), main_logits(theirs, inputs),
                               rtol=1e-4, atol=1e-4)

import json
import tarfile
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from segmaker import artifacts
from segmaker.artifacts import (
    ModelManifest,
    check_compatible,
    load_inference,
    read_model_dir,
    write_model_dir,
)
from segmaker.errors import UserError
from segmaker.models import SegmentationInference, build_network
from tests.serving_model import copy_weights

WORKING_SIZE = 64
MANIFEST = ModelManifest(algorithm="fcn", backbone="resnet50", num_classes=3, working_size=WORKING_SIZE,
                         class_names=("road", "car", "sky"), label_map={"scale": "1"}, best_epoch=4,
                         best_miou=0.5)
HYPERPARAMETERS = {"algorithm": "fcn", "num_classes": 3, "crop_size": 32}
IMAGES = [np.random.default_rng(3).integers(0, 256, size=shape, dtype=np.uint8)
          for shape in [(37, 91, 3), (120, 50, 3)]]


def training_network(seed: int) -> mx.gluon.HybridBlock:
    """A network as the training loop has it: crop size, with the auxiliary head."""
    mx.random.seed(seed)
    return build_network("fcn", "resnet50", 3, size=32, aux=True)


def reference_masks(net) -> list:
    """What full-resolution inference from `net`'s parameters gives, built without the model directory."""
    inference_net = build_network("fcn", "resnet50", 3, size=WORKING_SIZE, aux=False)
    copy_weights(net, inference_net)
    return SegmentationInference(inference_net, WORKING_SIZE, [mx.cpu()]).predict_masks(IMAGES)


@pytest.fixture(scope="module")
def nets():
    return {"final": training_network(1), "best": training_network(2)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, nets) -> Path:
    directory = tmp_path_factory.mktemp("model")
    # ONNX export takes most of the time of a write; it has its own (slow) test below.
    write_model_dir(directory, MANIFEST, final_net=nets["final"], best=nets["best"],
                    hyperparameters=HYPERPARAMETERS, onnx=False)
    return directory


def test_model_dir_has_builtin_names_export_and_manifest(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted(["model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json",
                            "model-symbol.json", "model-0000.params"])
    assert json.loads((model_dir / "hyperparams.json").read_text()) == HYPERPARAMETERS
    assert json.loads((model_dir / "segmaker.json").read_text()) == {
        "format_version": 1, "algorithm": "fcn", "backbone": "resnet50", "num_classes": 3,
        "working_size": WORKING_SIZE, "class_names": ["road", "car", "sky"], "label_map": {"scale": "1"},
        "best_epoch": 4, "best_mIOU": 0.5, "image_scale": "base_size",
    }


def test_read_model_dir_round_trip(model_dir):
    read = read_model_dir(model_dir)
    assert read.manifest == MANIFEST
    manifest = read.manifest
    assert (manifest.algorithm, manifest.backbone, manifest.num_classes, manifest.working_size) == (
        "fcn", "resnet50", 3, 64)
    assert read.manifest.names() == ["road", "car", "sky"] and read.manifest.label_map == {"scale": "1"}
    assert read.best_params == model_dir / "model_best.params"
    assert read.onnx_file is None
    assert read.symbol_file == model_dir / "model-symbol.json"


def test_best_and_final_parameters_predict_like_their_networks(model_dir, nets):
    read = read_model_dir(model_dir)
    for which in ("best", "final"):
        masks = load_inference(read, [mx.cpu()], params=which).predict_masks(IMAGES)
        for mask, expected in zip(masks, reference_masks(nets[which])):
            np.testing.assert_array_equal(mask, expected)


def test_symbol_export_computes_the_main_head(model_dir, nets):
    exported = mx.gluon.SymbolBlock.imports(str(model_dir / "model-symbol.json"), ["data"],
                                            str(model_dir / "model-0000.params"))
    reference = build_network("fcn", "resnet50", 3, size=WORKING_SIZE, aux=False)
    copy_weights(nets["best"], reference)
    batch = mx.nd.random.uniform(-1, 1, shape=(1, 3, WORKING_SIZE, WORKING_SIZE))
    np.testing.assert_allclose(exported(batch).asnumpy(), reference(batch)[0].asnumpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_model_dir_includes_onnx_of_the_best_parameters(tmp_path, nets):
    import onnxruntime

    read = write_model_dir(tmp_path, MANIFEST, final_net=nets["final"], best=nets["best"], hyperparameters={})
    assert read.onnx_file == tmp_path / "model.onnx"
    reference = build_network("fcn", "resnet50", 3, size=WORKING_SIZE, aux=False)
    copy_weights(nets["best"], reference)
    batch = np.random.default_rng(5).uniform(-1, 1, (1, 3, WORKING_SIZE, WORKING_SIZE)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(read.onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    np.testing.assert_allclose(logits, reference(mx.nd.array(batch))[0].asnumpy(), rtol=1e-3, atol=1e-4)


def test_rewrite_with_the_best_file_already_in_place_keeps_it(tmp_path, nets):
    best_file = tmp_path / "model_best.params"
    nets["best"].save_parameters(str(best_file))
    before = best_file.read_bytes()
    (tmp_path / "model.onnx").write_bytes(b"from an older write")
    write_model_dir(tmp_path, MANIFEST, final_net=nets["final"], best=best_file, hyperparameters={},
                    onnx=False)
    assert (tmp_path / "model_best.params").read_bytes() == before
    assert not (tmp_path / "model.onnx").exists(), "a stale ONNX file would not match the new parameters"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging or temp files left"


def test_without_validation_best_is_final(tmp_path, nets):
    manifest = ModelManifest("fcn", "resnet50", 3, WORKING_SIZE)
    read = write_model_dir(tmp_path, manifest, final_net=nets["final"], hyperparameters={}, onnx=False)
    assert read.best_params.read_bytes() == read.final_params.read_bytes()
    assert read.onnx_file is None
    names = json.loads((tmp_path / "segmaker.json").read_text())["class_names"]
    assert names == ["class_0", "class_1", "class_2"]


# --- the model channel: tarballs and compatibility -----------------------------------------------------


@pytest.fixture
def small_model_dir(tmp_path) -> Path:
    """A model directory whose parameter files are stand-ins: reading a directory does not open them, and
    gzipping real ResNet parameters would take a minute."""
    directory = tmp_path / "small"
    directory.mkdir()
    (directory / "segmaker.json").write_text(json.dumps(MANIFEST.to_json_dict()))
    (directory / "model_algo-1").write_bytes(b"final parameters")
    return directory


def make_tarball(model_dir: Path, tarball: Path, *, folder: str = "") -> Path:
    with tarfile.open(str(tarball), "w:gz") as archive:
        for path in model_dir.iterdir():
            archive.add(str(path), arcname=folder + path.name)
    return tarball


def test_reads_a_directory_holding_model_tar_gz(small_model_dir, tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    make_tarball(small_model_dir, channel / "model.tar.gz")
    read = read_model_dir(channel, extract_dir=tmp_path / "extracted")
    assert read.directory == tmp_path / "extracted"
    assert read.manifest == MANIFEST
    assert read.final_params.read_bytes() == b"final parameters"
    assert read.best_params is None


def test_reads_a_tarball_of_the_folder_itself(small_model_dir, tmp_path):
    tarball = make_tarball(small_model_dir, tmp_path / "model.tar.gz", folder="model/")
    read = read_model_dir(tarball)
    assert read.directory.name == "model" and read.manifest == MANIFEST


def test_refuses_an_archive_entry_outside_its_folder(tmp_path):
    (tmp_path / "evil").write_text("x")
    with tarfile.open(str(tmp_path / "model.tar.gz"), "w:gz") as archive:
        archive.add(str(tmp_path / "evil"), arcname="../evil")
    with pytest.raises(UserError, match="outside its folder: '../evil'"):
        read_model_dir(tmp_path / "model.tar.gz", extract_dir=tmp_path / "out")


def test_refuses_a_corrupt_archive(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="cannot extract model archive .*model.tar.gz"):
        read_model_dir(tmp_path, extract_dir=tmp_path / "out")


def test_a_directory_without_a_model_names_what_it_holds(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"expected segmaker.json .*hyperparams.json with model_best.params"
                                        r" or model_algo-1 .*, or model.tar.gz; found weights.bin"):
        read_model_dir(tmp_path)


def test_a_manifest_missing_a_field_names_it(tmp_path):
    (tmp_path / "segmaker.json").write_text(json.dumps({"algorithm": "fcn", "backbone": "resnet50"}))
    with pytest.raises(UserError, match="segmaker.json: 'num_classes' must be a int, not None"):
        read_model_dir(tmp_path)


def test_check_compatible_lists_exactly_what_differs(model_dir):
    read = read_model_dir(model_dir)
    check_compatible(read, "fcn", "resnet50", 3)
    with pytest.raises(UserError) as raised:
        check_compatible(read, "psp", "resnet50", 5)
    message = str(raised.value)
    assert "algorithm is 'fcn' in the model but 'psp' in the hyperparameters" in message
    assert "num_classes is 3 in the model but 5" in message
    assert "backbone" not in message


def test_params_file_falls_back_when_one_is_missing(tmp_path):
    read = artifacts.ModelArtifacts(tmp_path, MANIFEST, final_params=tmp_path / "model_algo-1")
    assert read.params_file("best") == tmp_path / "model_algo-1"
    with pytest.raises(UserError, match="holds neither"):
        artifacts.ModelArtifacts(tmp_path, MANIFEST).params_file("final")

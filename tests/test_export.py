"""ONNX export: all three algorithms, checked against MXNet with onnxruntime; ONNX serving engine."""

import logging
from pathlib import Path

import mxnet as mx
import numpy as np
import onnxruntime
import pytest

from segmaker import artifacts
from segmaker.errors import UserError
from segmaker.export import adaptive_bins, averaging_matrix, export_onnx
from segmaker.models import SegmentationInference, build_network
from segmaker.serving.predictor import OnnxInference, Predictor, choose_engine, load_predictor
from tests.serving_model import write_tiny_model_dir

SIZE = 64  # PSP's feature map is 8x8: pooling to 3 and 6 bins has uneven, overlapping bins


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module", params=["fcn", "psp", "deeplab"])
def exported(request, tmp_path_factory):
    mx.random.seed(3)
    net = build_network(request.param, "resnet50", 5, size=SIZE, aux=True)
    net.hybridize(static_alloc=True, static_shape=True)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    assert export_onnx(net, SIZE, path)
    return request.param, net, path


def test_onnx_matches_mxnet(exported):
    algorithm, net, path = exported
    x = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    reference = net(mx.nd.array(x))[0].asnumpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    assert output.shape == reference.shape == (1, 5, SIZE, SIZE)
    agreement = (output.argmax(axis=1) == reference.argmax(axis=1)).mean()
    assert agreement >= 0.999, f"{algorithm}: masks agree on {agreement:.4%} of pixels"
    assert np.abs(_softmax(output) - _softmax(reference)).max() < 1e-4


def test_onnx_engine_serves_any_size_like_mxnet(exported):
    algorithm, net, path = exported
    onnx_predictor = Predictor(OnnxInference(path, SIZE), ["c"] * 5, "onnx")
    mxnet_predictor = Predictor(SegmentationInference(net, SIZE, [mx.cpu()]), ["c"] * 5, "mxnet")
    image = np.random.default_rng(1).integers(0, 256, (45, 100, 3), dtype=np.uint8)
    onnx_mask = onnx_predictor.predict_mask(image)
    assert onnx_mask.shape == (45, 100)
    assert (onnx_mask == mxnet_predictor.predict_mask(image)).mean() >= 0.999
    np.testing.assert_allclose(onnx_predictor.predict_probabilities(image),
                               mxnet_predictor.predict_probabilities(image), atol=1e-4)


def test_export_is_atomic_and_reports_failure(tmp_path, caplog):
    class NotExportable(mx.gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return F.contrib.AdaptiveAvgPooling2D(F.sort(x), output_size=2)  # sort: no ONNX converter

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    block = NotExportable()
    block.initialize()
    assert not export_onnx(block, 8, target)
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]
    assert "cannot be exported" in caplog.text


@pytest.mark.parametrize("size, bins", [(8, 1), (8, 2), (8, 3), (8, 6), (4, 6), (60, 6), (7, 7)])
def test_averaging_matrix_matches_mxnet_adaptive_pooling(size, bins):
    x = np.random.default_rng(2).normal(size=(1, 2, size, size)).astype(np.float32)
    expected = mx.nd.contrib.AdaptiveAvgPooling2D(mx.nd.array(x), output_size=bins).asnumpy()
    matrix = averaging_matrix(size, bins)
    np.testing.assert_allclose(matrix @ x @ matrix.T, expected, rtol=1e-5, atol=1e-6)
    assert all(start < end for start, end in adaptive_bins(size, bins))


@pytest.mark.parametrize("forced, has_onnx, gpu, expected", [
    (None, True, None, "onnx"),  # CPU with an export: ONNX Runtime, nothing timed at load
    (None, False, None, "mxnet"),
    (None, True, 0, "mxnet"),  # GPU: MXNet
    ("mxnet", True, None, "mxnet"),
    ("onnx", True, None, "onnx"),
])
def test_choose_engine(forced, has_onnx, gpu, expected):
    assert choose_engine(forced, has_onnx, gpu) == expected


@pytest.mark.parametrize("has_onnx, gpu, reason", [(False, None, "no model.onnx"), (True, 0, "CPU only")])
def test_forcing_onnx_where_it_cannot_run_is_a_user_error(has_onnx, gpu, reason):
    with pytest.raises(UserError, match=reason):
        choose_engine("onnx", has_onnx, gpu)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("served") / "model", "fcn", size=32)


def test_load_predictor_builds_only_the_onnx_engine_on_cpu(tiny_model_dir, monkeypatch, caplog):
    def no_mxnet(*args, **kwargs):
        raise AssertionError("the MXNet engine must not be built when ONNX Runtime serves")

    monkeypatch.setattr(artifacts, "load_inference", no_mxnet)
    with caplog.at_level(logging.INFO, logger="segmaker.serving.predictor"):
        predictor = load_predictor(tiny_model_dir, threads=1)
    assert predictor.engine_name == "onnx"
    assert "model load: ONNX Runtime session" in caplog.text and "model load: warm-up forward" in caplog.text


def test_forced_mxnet_engine_gives_the_masks_of_onnx(tiny_model_dir):
    onnx_predictor = load_predictor(tiny_model_dir)
    mxnet_predictor = load_predictor(tiny_model_dir, engine="mxnet")
    assert mxnet_predictor.engine_name == "mxnet"
    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert (onnx_predictor.predict_mask(image) == mxnet_predictor.predict_mask(image)).mean() >= 0.999


def test_model_without_onnx_is_served_by_mxnet(tmp_path):
    model_dir = write_tiny_model_dir(tmp_path / "model", "fcn", size=32, onnx=False)
    assert load_predictor(model_dir).engine_name == "mxnet"


def test_module_import_leaves_the_exporter_registry_alone():
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph

    import segmaker.export  # noqa: F401

    converter = MXNetGraph.registry_[12]["_contrib_AdaptiveAvgPooling2D"]
    assert converter.__module__.startswith("mxnet.")
    assert Path(segmaker.export.__file__).exists()

"""ONNX export: all three algorithms, checked against MXNet with onnxruntime; ONNX serving engine."""

from pathlib import Path

import mxnet as mx
import numpy as np
import onnxruntime
import pytest

from segmaker.export import adaptive_bins, averaging_matrix, export_onnx
from segmaker.models import SegmentationInference, build_network
from segmaker.serving.predictor import OnnxInference, Predictor, pick_fastest

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


def test_pick_fastest_keeps_the_faster_engine():
    class Fake:
        working_size = 8

        def __init__(self, delay):
            self.delay = delay

        def predict_masks(self, images):
            import time

            time.sleep(self.delay)
            return [np.zeros(images[0].shape[:2], np.uint8)]

    name, engine = pick_fastest({"slow": lambda: Fake(0.05), "fast": lambda: Fake(0.0)})
    assert name == "fast" and engine.delay == 0.0
    assert pick_fastest({"only": lambda: Fake(0.01)})[0] == "only"


def test_module_import_leaves_the_exporter_registry_alone():
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph

    import segmaker.export  # noqa: F401

    converter = MXNetGraph.registry_[12]["_contrib_AdaptiveAvgPooling2D"]
    assert converter.__module__.startswith("mxnet.")
    assert Path(segmaker.export.__file__).exists()

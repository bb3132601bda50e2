"""Export a trained segmentation network to ONNX at a static 1x3xSxS input.

MXNet's exporter handles FCN and DeepLab as they are. PSPNet's pyramid pooling uses adaptive average
pooling to 2x2, 3x3 and 6x6, which the exporter refuses (it only knows output size 1). Because the
input shape is static, every adaptive pooling input has a known H x W, so it can be written as ordinary
ONNX ops: bin i of an axis of length n covers [floor(i*n/k), ceil((i+1)*n/k)) (MXNet's edges), so
pooling along that axis is a product with a constant k x n averaging matrix, and pooling a rectangle is
one MatMul for the rows and one for the columns (the mean of row means over equal-length rows is the
rectangle's mean). Results equal MXNet's up to float rounding.

That converter is installed into MXNet's exporter registry only for the duration of one export and the
previous entry is restored afterwards, so importing this module changes nothing.
"""

import contextlib
import logging
import math
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import mxnet as mx
import numpy as np

from segmaker.files import staged_file

LOG = logging.getLogger(__name__)

ADAPTIVE_POOL_OP = "_contrib_AdaptiveAvgPooling2D"
INPUT_NAME = "data"
# MXNet's converters are written for ONNX opsets 12-13, but the exporter stamps the model with the newest
# opset the installed onnx knows (22 for onnx 1.17), which onnxruntime 1.19 refuses and under which some of
# those ops (ReduceMean's `axes` attribute) mean something else. The model is restamped with this one.
ONNX_OPSET = 13


def export_onnx(net: mx.gluon.HybridBlock, working_size: int, path: Path) -> bool:
    """Write `net`'s main head as ONNX (input `data` 1x3xSxS, output 1xCxSxS logits) to `path` atomically.

    Returns False, and logs why, when the network cannot be exported; `path` is then left untouched.
    """
    path = Path(path)
    try:
        symbol, params = main_head_graph(net)
        shapes = _internal_shapes(symbol, (1, 3, working_size, working_size))
        with _static_adaptive_pooling(shapes):
            _export_atomically(symbol, params, (1, 3, working_size, working_size), path)
    except (mx.base.MXNetError, NotImplementedError, AttributeError, ValueError, ImportError) as exc:
        LOG.warning("ONNX export skipped: %s cannot be exported: %s", type(net).__name__, exc)
        return False
    LOG.info("wrote ONNX model %s (input 1x3x%dx%d)", path, working_size, working_size)
    return True


def main_head_graph(net: mx.gluon.HybridBlock) -> Tuple[mx.sym.Symbol, Dict[str, mx.nd.NDArray]]:
    """The symbol of the network's first output (the main head, not the auxiliary one) and its parameters."""
    outputs = net(mx.sym.var(INPUT_NAME))
    symbol = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    needed = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    params = {p.name: p.data(p.list_ctx()[0]).as_in_context(mx.cpu())
              for p in net.collect_params().values() if p.name in needed}
    return symbol, params


def _internal_shapes(symbol: mx.sym.Symbol, input_shape: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
    """Output shape of every node of the graph, by node name, for a static input shape."""
    internals = symbol.get_internals()
    _, out_shapes, _ = internals.infer_shape(**{INPUT_NAME: input_shape})
    suffix = "_output"
    return {name[: -len(suffix)] if name.endswith(suffix) else name: tuple(shape)
            for name, shape in zip(internals.list_outputs(), out_shapes)}


def _export_atomically(symbol, params, input_shape, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as temporary:
        mx.onnx.export_model(symbol, params, in_shapes=[input_shape], in_types=[np.float32],
                             onnx_file_path=str(temporary))
        _finalize_onnx(str(temporary), ONNX_OPSET)


def _finalize_onnx(onnx_file: str, opset: int) -> None:
    """Restamp the opset, and list the weights as constants only: MXNet's exporter also declares every
    initializer as a graph input, which stops onnxruntime from folding constants (BatchNorm into Conv)."""
    import onnx

    model = onnx.load(onnx_file)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    weights = {initializer.name for initializer in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    onnx.checker.check_model(model)
    onnx.save(model, onnx_file)


def adaptive_bins(size: int, bins: int) -> List[Tuple[int, int]]:
    """MXNet's adaptive pooling bin edges along one axis: [floor(i*n/k), ceil((i+1)*n/k))."""
    return [(math.floor(i * size / bins), math.ceil((i + 1) * size / bins)) for i in range(bins)]


@contextlib.contextmanager
def _static_adaptive_pooling(shapes: Dict[str, Tuple[int, ...]]) -> Iterator[None]:
    """Temporarily let MXNet's exporter convert adaptive average pooling of any output size."""
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph

    registry = MXNetGraph.registry_.setdefault(12, {})
    previous = registry.get(ADAPTIVE_POOL_OP)
    registry[ADAPTIVE_POOL_OP] = _adaptive_pooling_converter(shapes, previous)
    try:
        yield
    finally:
        if previous is None:
            registry.pop(ADAPTIVE_POOL_OP, None)
        else:
            registry[ADAPTIVE_POOL_OP] = previous


def _adaptive_pooling_converter(shapes, fallback):
    def convert(node, **kwargs):
        from onnx import numpy_helper
        from onnx.helper import make_node

        name = node["name"]
        input_name = kwargs["outputs_lookup"][node["inputs"][0][0]][node["inputs"][0][1]].name
        out_h, out_w = _output_size(node.get("attrs", {}).get("output_size", "1"))
        if (out_h, out_w) == (1, 1) and fallback is not None:
            return fallback(node, **kwargs)
        if input_name not in shapes:
            raise NotImplementedError(f"no static shape known for the input of {name}")
        _, _, in_h, in_w = shapes[input_name]
        # (k_h x H) @ (N, C, H, W) -> (N, C, k_h, W); then @ (W x k_w) -> (N, C, k_h, k_w).
        rows, cols = name + "_rows", name + "_cols"
        kwargs["initializer"].append(numpy_helper.from_array(averaging_matrix(in_h, out_h), rows))
        kwargs["initializer"].append(numpy_helper.from_array(averaging_matrix(in_w, out_w).T.copy(), cols))
        return [
            make_node("MatMul", [rows, input_name], [name + "_pooled_h"]),
            make_node("MatMul", [name + "_pooled_h", cols], [name], name=name),
        ]

    return convert


def _output_size(raw: str) -> Tuple[int, int]:
    values = [int(v) for v in str(raw).strip("()[] ").replace(" ", "").split(",") if v]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def averaging_matrix(size: int, bins: int) -> np.ndarray:
    """bins x size matrix whose row i averages MXNet's adaptive-pooling bin i of an axis of length `size`."""
    matrix = np.zeros((bins, size), dtype=np.float32)
    for i, (start, end) in enumerate(adaptive_bins(size, bins)):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix

"""Tiny real models for the serving tests (random weights, ResNet-50 backbone, small working size)."""

import atexit
import functools
import io
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import mxnet as mx
import numpy as np
from PIL import Image

from segmaker.models import SegmentationInference, build_network
from segmaker.serving.predictor import Predictor

CLASS_NAMES = ("background", "road", "car")


def copy_weights(source: mx.gluon.Block, target: mx.gluon.Block) -> None:
    """`target` gets `source`'s weights as MXNet documents it (save_parameters, then load_parameters
    skipping an auxiliary head `target` lacks), independently of segmaker's loader."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "weights.params")
        source.save_parameters(path)
        target.load_parameters(path, ignore_extra=True)


def tiny_inference(algorithm: str = "fcn", size: int = 32, num_classes: int = 3) -> SegmentationInference:
    mx.random.seed(7)
    net = build_network(algorithm, "resnet50", num_classes, size=size, aux=False)
    return SegmentationInference(net, size, [mx.cpu()])


def tiny_predictor(algorithm: str = "fcn", size: int = 32,
                   class_names: Sequence[str] = CLASS_NAMES) -> Predictor:
    predictor = Predictor(tiny_inference(algorithm, size, len(class_names)), class_names, "mxnet")
    predictor.warm_up()
    return predictor


def image_bytes(height: int, width: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tiny_model_dir(model_dir: Path, algorithm: str = "fcn", size: int = 32,
                         class_names: Sequence[str] = CLASS_NAMES, onnx: bool = True) -> Path:
    """A real model directory as training leaves it (random weights), through `artifacts`.

    The weights are seeded, so every call with the same arguments writes the same model: the first one in a
    test process writes it (a network, its symbol and ONNX exports: ~5 s on two CPU cores), the others copy
    that directory. (A fresh write would differ only in the exports' layer-name prefixes, fcn0_, fcn1_...,
    which count the networks the process built before.)"""
    key = (algorithm, size, tuple(class_names), onnx)
    if key not in _WRITTEN:
        _WRITTEN[key] = _write_model_dir(Path(_written_root()) / str(len(_WRITTEN)) / "model", *key)
    shutil.copytree(str(_WRITTEN[key]), str(model_dir), dirs_exist_ok=True)
    return model_dir


# The directories written so far in this process, by arguments, under the system's temporary folder as it is
# at import (tests point tempfile elsewhere for a while); removed when the process ends.
_TEMPORARY_FOLDER = tempfile.gettempdir()
_WRITTEN: Dict[Tuple[str, int, Tuple[str, ...], bool], Path] = {}


@functools.lru_cache(maxsize=None)
def _written_root() -> str:
    root = tempfile.mkdtemp(prefix="segmaker-tiny-models-", dir=_TEMPORARY_FOLDER)
    atexit.register(shutil.rmtree, root, True)
    return root


def _write_model_dir(model_dir: Path, algorithm: str, size: int, class_names: Tuple[str, ...],
                     onnx: bool) -> Path:
    from segmaker import artifacts

    mx.random.seed(11)
    net = build_network(algorithm, "resnet50", len(class_names), size=size, aux=True)
    manifest = artifacts.ModelManifest(algorithm=algorithm, backbone="resnet50", num_classes=len(class_names),
                                       working_size=size, class_names=class_names)
    artifacts.write_model_dir(model_dir, manifest, final_net=net, onnx=onnx,
                              hyperparameters={"algorithm": algorithm, "num_classes": len(class_names)})
    return model_dir

"""Tiny real models for the serving tests (random weights, ResNet-50 backbone, small working size)."""

import io
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np
from PIL import Image

from segmaker.models import SegmentationInference, build_network
from segmaker.serving.predictor import Predictor

CLASS_NAMES = ("background", "road", "car")


def tiny_inference(algorithm: str = "fcn", size: int = 32, num_classes: int = 3) -> SegmentationInference:
    mx.random.seed(7)
    net = build_network(algorithm, "resnet50", num_classes, size=size, aux=False)
    return SegmentationInference(net, size, [mx.cpu()])


def tiny_predictor(algorithm: str = "fcn", size: int = 32, class_names: Sequence[str] = CLASS_NAMES,
                   warm: bool = True) -> Predictor:
    predictor = Predictor(tiny_inference(algorithm, size, len(class_names)), class_names, "mxnet")
    if warm:
        predictor.warm_up()
    return predictor


def image_bytes(height: int, width: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tiny_model_dir(model_dir: Path, algorithm: str = "fcn", size: int = 32,
                         num_classes: int = 3) -> Path:
    """A real model directory as training leaves it (random weights), through `artifacts`."""
    import tempfile

    from segmaker import artifacts
    from segmaker.config import parse_hyperparameters
    from segmaker.data import parse_label_map

    config = parse_hyperparameters({"num_classes": str(num_classes), "algorithm": algorithm,
                                    "crop_size": str(size), "base_size": str(size),
                                    "use_pretrained_model": "False"})
    mx.random.seed(11)
    net = build_network(algorithm, "resnet50", num_classes, size=size, aux=True)
    with tempfile.TemporaryDirectory() as scratch:
        params = Path(scratch) / "final.params"
        net.save_parameters(str(params))
        artifacts.write_model_dir(model_dir, config=config, best_params=params, final_params=params,
                                  label_map=parse_label_map({"scale": "1"}, num_classes),
                                  working_size=size, best_epoch=None, best_miou=None)
    return model_dir

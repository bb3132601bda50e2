"""Validation: the training weights as they are saved, loaded into a network built at the working size, over
every image at its own resolution, counted into ONE confusion matrix for the whole validation set."""

import logging
import os
import threading
from pathlib import Path
from typing import Iterable, List, Optional

import mxnet as mx
import numpy as np

from segmaker import models
from segmaker.config import TrainingConfig
from segmaker.data.loader import ValidationBatch
from segmaker.metrics import ConfusionMatrix
from segmaker.training.network import build_validation_network, working_size

log = logging.getLogger(__name__)


class Validator:
    """Owns the inference network, built once, and the file of the weights it last validated."""

    def __init__(self, config: TrainingConfig, contexts: List[mx.Context], snapshot: Path):
        self.num_classes = config.num_classes
        self.snapshot = snapshot
        self._net = build_validation_network(config)
        # image_scale=native: working-size tiles slide over each image at its own resolution, as in serving.
        self._inference = models.SegmentationInference(self._net, working_size(config), contexts,
                                                       image_scale=config.image_scale)

    def validate(
        self, train_net: mx.gluon.HybridBlock, batches: Iterable[ValidationBatch], stop: threading.Event
    ) -> Optional[ConfusionMatrix]:
        """The confusion matrix of `train_net`'s weights, or None when `stop` was set before the end.

        The weights go through the snapshot file: save_parameters writes each parameter averaged over the
        devices (MXNet's Parameter._reduce; BatchNorm statistics differ per device), so the network that
        validates holds exactly what `keep_snapshot_as` later publishes as model_best.params.
        """
        train_net.save_parameters(str(self.snapshot))
        self.load_weights_file(self.snapshot)
        return self.evaluate(batches, stop)

    def keep_snapshot_as(self, path: Path) -> None:
        """The weights last validated become `path` (a rename: the very bytes validated)."""
        os.replace(str(self.snapshot), str(path))

    def load_weights_file(self, params_file: Path) -> None:
        """Validate the weights saved in `params_file` (a training network's, aux head included)."""
        models.load_parameters(self._net, params_file)

    def evaluate(
        self, batches: Iterable[ValidationBatch], stop: Optional[threading.Event] = None
    ) -> Optional[ConfusionMatrix]:
        """The confusion matrix of the loaded weights over `batches`; None if `stop` is set between two."""
        matrix = ConfusionMatrix(self.num_classes)
        done = 0
        for images, masks in batches:
            if stop is not None and stop.is_set():
                break
            for predicted, truth in zip(self._inference.predict_masks(images), masks):
                matrix.update(predicted, truth)
            done += len(images)
        # Also when `batches` itself ended on the stop (several hosts agree on it between batches).
        if stop is not None and stop.is_set():
            log.info("Validation interrupted by the stop request after %d images", done)
            return None
        return matrix

    def predict(self, images: List[np.ndarray]) -> List[np.ndarray]:
        """Predicted masks (H x W uint8) of HxWx3 uint8 images, with the loaded weights."""
        return self._inference.predict_masks(images)

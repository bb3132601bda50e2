"""Validation: the current weights, copied into a network built at the working size, over every image at
its own resolution, counted into ONE confusion matrix for the whole validation set."""

from pathlib import Path
from typing import Iterable, List

import mxnet as mx
import numpy as np

from segmaker import models
from segmaker.config import TrainingConfig
from segmaker.data.loader import ValidationBatch
from segmaker.metrics import ConfusionMatrix
from segmaker.training.network import build_validation_network, working_size


class Validator:
    """Owns the inference network, built once; load weights into it, then evaluate."""

    def __init__(self, config: TrainingConfig, contexts: List[mx.Context]):
        self.num_classes = config.num_classes
        self._net = build_validation_network(config)
        # image_scale=native: working-size tiles slide over each image at its own resolution, as in serving.
        self._inference = models.SegmentationInference(self._net, working_size(config), contexts,
                                                       image_scale=config.image_scale)

    def load_weights_from(self, train_net: mx.gluon.HybridBlock) -> None:
        """Validate the training network's current weights from now on."""
        models.copy_parameters(train_net, self._net)

    def load_weights_file(self, params_file: Path) -> None:
        """Validate the weights saved in `params_file` (a training network's, aux head included)."""
        models.load_parameters(self._net, params_file)

    def evaluate(self, batches: Iterable[ValidationBatch]) -> ConfusionMatrix:
        """The confusion matrix of the loaded weights over all `batches`."""
        matrix = ConfusionMatrix(self.num_classes)
        for images, masks in batches:
            for predicted, truth in zip(self._inference.predict_masks(images), masks):
                matrix.update(predicted, truth)
        return matrix

    def predict(self, images: List[np.ndarray]) -> List[np.ndarray]:
        """Predicted masks (H x W uint8) of HxWx3 uint8 images, with the loaded weights."""
        return self._inference.predict_masks(images)

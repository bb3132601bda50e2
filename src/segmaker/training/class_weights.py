"""What training knows about the classes of its masks: the class weights the loss uses (none, the
`class_weights` list, or `balanced` = median frequency) and the check after the first epoch that every class
occurs."""

import logging
from typing import Optional, Sequence

import numpy as np

from segmaker.config import BALANCED, TrainingConfig
from segmaker.data.class_counts import count_class_pixels
from segmaker.errors import UserError
from segmaker.training.feed import DataFeed
from segmaker.training.loss import median_frequency_weights

log = logging.getLogger(__name__)


def resolve_class_weights(config: TrainingConfig, feed: DataFeed) -> Optional[np.ndarray]:
    """None (every class weighs 1), the configured weights, or median-frequency weights counted from the
    training masks before training (File mode; one decoding pass over the masks, logged)."""
    if config.class_weights is None:
        return None
    if config.class_weights != BALANCED:
        return np.asarray(config.class_weights, np.float64)
    files = feed.data.train.files
    if files is None:
        # A Pipe-mode channel is one stream per epoch: counting it first would cost an epoch of data.
        raise UserError(
            "class_weights = balanced needs the train channel in File mode (a Pipe-mode stream cannot be"
            ' read twice); give the weights instead, e.g. class_weights = "1,10" (median frequency:'
            " median(f) / f_c with f_c the share of class c among labelled pixels)"
        )
    counts = count_class_pixels(files, feed.data.train_label_map, config.num_classes, feed.pool)
    weights = median_frequency_weights(counts)
    log.info(
        "class_weights = balanced: pixels per class %s -> weights %s",
        counts.tolist(),
        ", ".join(f"{w:.4g}" for w in weights),
    )
    return weights


def check_training_classes(class_pixels: Sequence[int], num_classes: int) -> None:
    """After the first epoch: a UserError when the masks held nothing but class 0 and ignore (the job
    could only learn to predict background), else a warning naming every class that never occurred."""
    counts = list(class_pixels) + [0] * (num_classes - len(class_pixels))
    if not any(counts[1:]):
        raise UserError(
            f"the training masks of the first epoch hold only class 0 ({counts[0]} pixels) and ignore (255):"
            " nothing to learn but background. Check the label map: masks stored as 0/255 need"
            ' {"map": {"0": 0, "1": 255}}, and num_classes must count the classes the masks encode'
        )
    absent = [str(c) for c in range(num_classes) if counts[c] == 0]
    if absent:
        log.warning(
            "No training pixels of class %s in the first epoch (of %d classes): the network cannot learn"
            " %s; check num_classes and the label map",
            ", ".join(absent),
            num_classes,
            "it" if len(absent) == 1 else "them",
        )

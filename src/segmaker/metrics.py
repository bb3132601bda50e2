"""Segmentation metrics from one integer confusion matrix, and the metric log lines SageMaker scrapes.

Scores are derived from counts summed over the whole validation set (and over devices and hosts by
adding matrices), never averaged over batches, so they are exact whatever the batch split.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

from segmaker.transforms import IGNORE


class ConfusionMatrix:
    """counts[label, prediction] = number of pixels; pixels labelled 255 (ignore) are not counted."""

    def __init__(self, num_classes: int):
        if not 1 <= num_classes < IGNORE:
            raise ValueError(f"num_classes must be in 1..254, not {num_classes}")
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, label: np.ndarray) -> None:
        """Count one prediction against its label: arrays of class ids of the same shape, any layout."""
        prediction = np.asarray(prediction).ravel().astype(np.int64)
        label = np.asarray(label).ravel().astype(np.int64)
        if prediction.shape != label.shape:
            raise ValueError(f"prediction has {prediction.size} pixels but label has {label.size}")
        counted = label != IGNORE
        prediction, label = prediction[counted], label[counted]
        self._check_range(prediction, "prediction")
        self._check_range(label, "label")
        # One bincount over the flattened (label, prediction) pair fills the whole matrix at once.
        cells = np.bincount(label * self.num_classes + prediction, minlength=self.num_classes ** 2)
        self.counts += cells.reshape(self.num_classes, self.num_classes)

    def _check_range(self, ids: np.ndarray, what: str) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
            bad = ids[(ids < 0) | (ids >= self.num_classes)][0]
            raise ValueError(f"{what} holds class id {bad} outside 0..{self.num_classes - 1}")

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """A new matrix with the counts of both (devices of one host, or several hosts)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge confusion matrices of {self.num_classes} and"
                             f" {other.num_classes} classes")
        merged = ConfusionMatrix(self.num_classes)
        merged.counts = self.counts + other.counts
        return merged

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return self.merge(other)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def pixel_accuracy(self) -> float:
        """Correct pixels over counted pixels; 0.0 when nothing was counted."""
        return float(np.trace(self.counts)) / self.total if self.total else 0.0

    def _true_false_counts(self):
        true_positive = np.diag(self.counts).astype(np.float64)
        false_positive = self.counts.sum(axis=0) - true_positive
        false_negative = self.counts.sum(axis=1) - true_positive
        return true_positive, false_positive, false_negative

    def _present(self) -> np.ndarray:
        """Classes that occur in the label or the prediction; the others have no defined score."""
        return (self.counts.sum(axis=0) + self.counts.sum(axis=1)) > 0

    def iou_per_class(self) -> np.ndarray:
        """TP / (TP + FP + FN) per class; NaN for a class absent from both prediction and label."""
        tp, fp, fn = self._true_false_counts()
        return _divide_where(tp, tp + fp + fn, self._present())

    def dice_per_class(self) -> np.ndarray:
        """2TP / (2TP + FP + FN) per class; NaN for a class absent from both prediction and label."""
        tp, fp, fn = self._true_false_counts()
        return _divide_where(2 * tp, 2 * tp + fp + fn, self._present())

    def mean_iou(self) -> float:
        """Mean IoU over the classes present in prediction or label; 0.0 when none is."""
        return _mean_of_present(self.iou_per_class())

    def dice(self) -> float:
        """Mean Dice over the classes present in prediction or label; 0.0 when none is."""
        return _mean_of_present(self.dice_per_class())

    def scores(self) -> Dict[str, float]:
        """The three validation scores, keyed as in the metric names (validation:<key>)."""
        return {"pixel_accuracy": self.pixel_accuracy(), "mIOU": self.mean_iou(), "dice": self.dice()}


def class_names_or_default(names: Sequence[str], num_classes: int) -> List[str]:
    """The given class names, or class_0, class_1, ... when none were given."""
    return list(names) if names else [f"class_{i}" for i in range(num_classes)]


def per_class_scores(matrix: ConfusionMatrix) -> Dict[str, List[Optional[float]]]:
    """{"iou": [...], "dice": [...]} one value per class id; None where the class is absent from both
    prediction and label (no defined score, and JSON has no NaN)."""
    return {
        "iou": [_none_if_nan(v) for v in matrix.iou_per_class()],
        "dice": [_none_if_nan(v) for v in matrix.dice_per_class()],
    }


def per_class_table(matrix: ConfusionMatrix, names: Sequence[str]) -> str:
    """A small text table for the log: class, IoU, Dice, and its share of the labelled pixels."""
    names = class_names_or_default(names, matrix.num_classes)
    scores = per_class_scores(matrix)
    labelled = matrix.counts.sum(axis=1)
    width = max(len("class"), *(len(name) for name in names))
    lines = [f"{'class':<{width}}  IoU     Dice    pixels"]
    for k, name in enumerate(names):
        share = labelled[k] / matrix.total if matrix.total else 0.0
        lines.append(f"{name:<{width}}  {_score_text(scores['iou'][k])}  {_score_text(scores['dice'][k])}"
                     f"  {share:6.1%}")
    return "\n".join(lines)


def _score_text(value: Optional[float]) -> str:
    return "  -   " if value is None else f"{value:.4f}"


def _none_if_nan(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


def _divide_where(numerator: np.ndarray, denominator: np.ndarray, defined: np.ndarray) -> np.ndarray:
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=defined)
    return result


def _mean_of_present(per_class: np.ndarray) -> float:
    present = per_class[~np.isnan(per_class)]
    return float(present.mean()) if present.size else 0.0


# The built-in algorithm's log lines, byte for byte (note the space before the final dot of the quality
# lines): users' metric regexes and tuning jobs depend on them.
def train_loss_line(host: str, epoch: int, loss: float) -> str:
    return f"#quality_metric. host: {host}, epoch: {epoch}, train loss: {loss:.4f} ."


def train_throughput_line(host: str, epoch: int, samples_per_second: float) -> str:
    return (f"#throughput_metric. host: {host}, epoch: {epoch},"
            f" train throughput: {samples_per_second:.2f} samples/sec.")


def validation_line(host: str, epoch: int, name: str, value: float) -> str:
    """`name` is one of pixel_accuracy, mIOU, dice."""
    return f"#quality_metric. host: {host}, epoch: {epoch}, validation {name}: {value:.4f} ."


def validation_lines(host: str, epoch: int, matrix: ConfusionMatrix) -> List[str]:
    """The three validation lines of one epoch, in the built-in's order."""
    return [validation_line(host, epoch, name, value) for name, value in matrix.scores().items()]


def progress_line(host: str, completed_epochs: int, total_epochs: int) -> str:
    percent = int(100 * completed_epochs / total_epochs) if total_epochs else 100
    return f"#progress_metric: host={host}, completed {percent} % of epochs"


def _metric_regex(kind: str, what: str, tail: str) -> str:
    """A regex for one metric line whose only group is the number."""
    number = r"([0-9.eE+-]+|nan|inf)"
    return rf"#{kind}_metric\. host: \S+, epoch: \d+, {what}: {number}{tail}"


METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": _metric_regex("quality", "train loss", r" \.")},
    {"Name": "train:throughput", "Regex": _metric_regex("throughput", "train throughput", r" samples/sec\.")},
] + [
    {"Name": "validation:" + name, "Regex": _metric_regex("quality", "validation " + name, r" \.")}
    for name in ("pixel_accuracy", "mIOU", "dice")
]


def metric_definitions() -> List[Dict[str, str]]:
    """A fresh copy of METRIC_DEFINITIONS for `Estimator(metric_definitions=...)`, safe to modify."""
    return [dict(definition) for definition in METRIC_DEFINITIONS]

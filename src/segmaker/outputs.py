"""output/data: the per-epoch metrics table (CSV and JSON) and plots.

Plots use matplotlib's object API with the Agg canvas (no pyplot, so no process-wide backend state).
"""

import csv
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from segmaker.transforms import IGNORE

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
CURVES_PNG = "training_curves.png"
PREDICTIONS_PNG = "validation_predictions.png"


@dataclass(frozen=True)
class EpochRecord:
    """One row of the metrics table; validation metrics are None when there is no validation channel."""

    epoch: int
    train_loss: float
    throughput: float
    pixel_accuracy: Optional[float]
    mIOU: Optional[float]
    dice: Optional[float]
    lr: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "EpochRecord":
        return cls(**{f.name: raw[f.name] for f in fields(cls)})


def write_metrics(records: Sequence[EpochRecord], out_dir: Path) -> None:
    """metrics.csv and metrics.json, one entry per epoch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [f.name for f in fields(EpochRecord)]
    with _atomic_open(out_dir / METRICS_CSV, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if v is None else v for k, v in record.to_dict().items()})
    with _atomic_open(out_dir / METRICS_JSON) as handle:
        json.dump([r.to_dict() for r in records], handle, indent=1)


def plot_curves(records: Sequence[EpochRecord], path: Path) -> None:
    """Training loss and validation mIOU per epoch, side by side."""
    figure, canvas = _new_figure(width=10, height=4)
    epochs = [r.epoch for r in records]
    loss_axes = figure.add_subplot(1, 2, 1)
    loss_axes.plot(epochs, [r.train_loss for r in records], marker="o")
    loss_axes.set(title="train loss", xlabel="epoch")
    miou_axes = figure.add_subplot(1, 2, 2)
    validated = [r for r in records if r.mIOU is not None]
    miou_axes.plot([r.epoch for r in validated], [r.mIOU for r in validated], marker="o", color="tab:green")
    miou_axes.set(title="validation mIOU", xlabel="epoch", ylim=(0.0, 1.0))
    if not validated:
        miou_axes.text(0.5, 0.5, "no validation channel", ha="center", transform=miou_axes.transAxes)
    from matplotlib.ticker import MaxNLocator

    for axes in (loss_axes, miou_axes):
        axes.grid(True, alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    _save(figure, canvas, path)


def plot_predictions(
    images: Sequence[np.ndarray],
    true_masks: Sequence[np.ndarray],
    predicted: Sequence[np.ndarray],
    num_classes: int,
    path: Path,
) -> None:
    """A grid: each row one validation image, then it with the true mask and the predicted mask over it."""
    if not images:
        raise ValueError("plot_predictions needs at least one image")
    figure, canvas = _new_figure(width=9, height=3 * len(images))
    titles = ("image", "true mask", "predicted mask")
    for row, (image, truth, guess) in enumerate(zip(images, true_masks, predicted)):
        panels = (image, overlay(image, truth, num_classes), overlay(image, guess, num_classes))
        for col, panel in enumerate(panels):
            axes = figure.add_subplot(len(images), 3, row * 3 + col + 1)
            axes.imshow(panel)
            axes.set_axis_off()
            if row == 0:
                axes.set_title(titles[col])
    _save(figure, canvas, path)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """`image` (HxWx3 uint8) with each class's colour blended in; ignored pixels stay as they are."""
    colours = class_colours(num_classes)
    shown = mask != IGNORE
    blended = image.astype(np.float32)
    painted = colours[np.where(shown, mask, 0)]
    blended[shown] = (1 - alpha) * blended[shown] + alpha * painted[shown]
    return blended.clip(0, 255).astype(np.uint8)


def class_colours(num_classes: int) -> np.ndarray:
    """A fixed, well-separated RGB colour per class id (num_classes x 3, float32 0..255)."""
    from matplotlib import colormaps

    if num_classes <= 10:  # ten distinct hues
        colours = colormaps["tab10"](np.arange(num_classes))
    elif num_classes <= 20:  # tab20 pairs a dark and a light shade of each hue: all dark ones first
        order = np.concatenate([np.arange(0, 20, 2), np.arange(1, 20, 2)])[:num_classes]
        colours = colormaps["tab20"](order)
    else:
        colours = colormaps["hsv"](np.arange(num_classes) / num_classes)
    return (colours[:, :3] * 255).astype(np.float32)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=80)
    return figure, FigureCanvasAgg(figure)


def _save(figure, canvas, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    temp = path.with_name(path.name + ".tmp")
    canvas.print_png(str(temp))
    os.replace(str(temp), str(path))


class _atomic_open:
    """Open `path` for writing under a temporary name; rename into place when the block succeeds."""

    def __init__(self, path: Path, newline: Optional[str] = None):
        self.path = path
        self.temp = path.with_name(path.name + ".tmp")
        self.newline = newline

    def __enter__(self):
        self.handle = open(str(self.temp), "w", encoding="utf-8", newline=self.newline)
        return self.handle

    def __exit__(self, exc_type, exc, tb) -> None:
        self.handle.close()
        if exc_type is None:
            os.replace(str(self.temp), str(self.path))
        else:
            os.unlink(str(self.temp))


def read_metrics(out_dir: Path) -> List[EpochRecord]:
    """The records a previous `write_metrics` left (tests and resumed runs read them back)."""
    raw = json.loads((out_dir / METRICS_JSON).read_text(encoding="utf-8"))
    return [EpochRecord.from_dict(r) for r in raw]

"""output/data: the per-epoch metrics table (CSV and JSON, per-class columns included), plots, the
confusion matrix of the best epoch, and report.html (segmaker.report) that shows them all on one page.

Plots use matplotlib's object API with the Agg canvas (no pyplot, so no process-wide backend state).
"""

import csv
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from segmaker.files import staged_file
from segmaker.metrics import ConfusionMatrix, class_names_or_default, per_class_scores
from segmaker.transforms import IGNORE

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
CURVES_PNG = "training_curves.png"
PREDICTIONS_PNG = "validation_predictions.png"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
# Key of the best epoch's confusion counts in its history row (kept on that row only: see History.to_rows).
CONFUSION_KEY = "confusion_matrix"
PER_CLASS = ("iou_per_class", "dice_per_class")

Scores = Optional[Tuple[Optional[float], ...]]


@dataclass(frozen=True)
class EpochRecord:
    """One row of the metrics table; validation metrics are None when there is no validation channel.

    `iou_per_class` / `dice_per_class` hold one score per class id (None for a class absent from both
    prediction and label)."""

    epoch: int
    train_loss: float
    throughput: float
    pixel_accuracy: Optional[float]
    mIOU: Optional[float]
    dice: Optional[float]
    lr: float
    seconds: float
    iou_per_class: Scores = None
    dice_per_class: Scores = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "EpochRecord":
        values = {f.name: raw.get(f.name) for f in fields(cls)}
        for key in PER_CLASS:  # lists (JSON) or {name: score} (metrics.json) -> a tuple in class order
            found = values[key]
            if found is not None:
                values[key] = tuple(found.values() if isinstance(found, dict) else found)
        return cls(**values)

    @classmethod
    def of_epoch(cls, epoch: int, train_loss: float, throughput: float, lr: float, seconds: float,
                 matrix: Optional[ConfusionMatrix]) -> "EpochRecord":
        """The row of one epoch, its validation scores (overall and per class) taken from `matrix`."""
        if matrix is None:
            return cls(epoch, train_loss, throughput, None, None, None, lr, seconds)
        overall, per_class = matrix.scores(), per_class_scores(matrix)
        return cls(epoch, train_loss, throughput, overall["pixel_accuracy"], overall["mIOU"], overall["dice"],
                   lr, seconds, tuple(per_class["iou"]), tuple(per_class["dice"]))


Counts = Tuple[Tuple[int, ...], ...]


@dataclass(frozen=True)
class History:
    """A run's finished epochs and the confusion counts of its best one: one matrix, whatever the number of
    epochs, so a checkpoint stays small and a resumed run still reports the best epoch's matrix.

    The counts are nested tuples (not an array) so that two histories compare by value, as the
    `TrainingState`s holding them must. Checkpoints store `to_rows()`; `from_rows` parses them once.
    """

    records: Tuple[EpochRecord, ...] = ()
    best: Optional[Tuple[int, Counts]] = None  # (epoch, counts[label][prediction])

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: EpochRecord, best_matrix: Optional[ConfusionMatrix] = None) -> "History":
        """`record` appended; `best_matrix` when this epoch is the best so far (its counts replace the
        older best's)."""
        best = self.best if best_matrix is None else (record.epoch, _frozen(best_matrix.counts))
        return History(self.records + (record,), best)

    def best_confusion(self) -> Optional[Tuple[int, np.ndarray]]:
        """(epoch, counts) of the best epoch's confusion matrix, or None."""
        if self.best is None:
            return None
        return self.best[0], np.asarray(self.best[1], dtype=np.int64)

    def to_rows(self) -> List[dict]:
        """One metrics row per epoch; the best epoch's row carries its counts under CONFUSION_KEY."""
        rows = [record.to_dict() for record in self.records]
        for row in rows:
            if self.best is not None and row["epoch"] == self.best[0]:
                row[CONFUSION_KEY] = [list(line) for line in self.best[1]]
        return rows

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> "History":
        records = tuple(EpochRecord.from_dict(row) for row in rows)
        best = next(((row["epoch"], _frozen(row[CONFUSION_KEY])) for row in reversed(rows)
                     if CONFUSION_KEY in row), None)
        return cls(records, best)


def _frozen(counts) -> Counts:
    return tuple(tuple(int(value) for value in line) for line in counts)


def write_metrics(records: Sequence[EpochRecord], out_dir: Path, class_names: Sequence[str] = ()) -> None:
    """metrics.csv and metrics.json, one entry per epoch; per-class IoU and Dice under the class names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _names_for(records, class_names)
    base = [f.name for f in fields(EpochRecord) if f.name not in PER_CLASS]
    per_class = [f"{kind}_{name}" for kind in ("IoU", "Dice") for name in names]
    with _atomic_open(out_dir / METRICS_CSV, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=base + per_class)
        writer.writeheader()
        for record in records:
            writer.writerow(_csv_row(record, names))
    with _atomic_open(out_dir / METRICS_JSON) as handle:
        json.dump([_json_row(r, names) for r in records], handle, indent=1)


def _names_for(records: Sequence[EpochRecord], class_names: Sequence[str]) -> List[str]:
    counts = {len(r.iou_per_class) for r in records if r.iou_per_class is not None}
    if not counts:
        return []
    return class_names_or_default(class_names, max(counts))


def _csv_row(record: EpochRecord, names: Sequence[str]) -> Dict[str, object]:
    row = {k: v for k, v in record.to_dict().items() if k not in PER_CLASS}
    for kind, scores in (("IoU", record.iou_per_class), ("Dice", record.dice_per_class)):
        for k, name in enumerate(names):
            row[f"{kind}_{name}"] = scores[k] if scores is not None else None
    return {k: "" if v is None else v for k, v in row.items()}


def _json_row(record: EpochRecord, names: Sequence[str]) -> Dict[str, object]:
    row = record.to_dict()
    for key in PER_CLASS:
        if row[key] is not None:
            row[key] = dict(zip(names, row[key]))
    return row


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
    class_names: Sequence[str] = (),
) -> None:
    """A grid: each row one validation image, then it with the true mask and the predicted mask over it;
    a legend of the class colours below."""
    if not images:
        raise ValueError("plot_predictions needs at least one image")
    figure, canvas = _new_figure(width=9, height=3 * len(images) + 0.6)
    titles = ("image", "true mask", "predicted mask")
    for row, (image, truth, guess) in enumerate(zip(images, true_masks, predicted)):
        panels = (image, overlay(image, truth, num_classes), overlay(image, guess, num_classes))
        for col, panel in enumerate(panels):
            axes = figure.add_subplot(len(images), 3, row * 3 + col + 1)
            axes.imshow(panel)
            axes.set_axis_off()
            if row == 0:
                axes.set_title(titles[col])
    _legend(figure, class_names_or_default(class_names, num_classes))
    _save(figure, canvas, path, rect=(0, 0.6 / figure.get_figheight(), 1, 1))  # room for the legend


def _legend(figure, names: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    colours = class_colours(len(names)) / 255
    handles = [Patch(facecolor=colours[k], label=name) for k, name in enumerate(names[:40])]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)


def write_confusion(counts: np.ndarray, class_names: Sequence[str], out_dir: Path) -> None:
    """confusion_matrix.csv (pixel counts, rows = true class, columns = predicted) and its picture."""
    names = class_names_or_default(class_names, len(counts))
    with _atomic_open(out_dir / CONFUSION_CSV, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, counts.tolist()):
            writer.writerow([name, *row])
    plot_confusion(counts, names, out_dir / CONFUSION_PNG)


def plot_confusion(counts: np.ndarray, names: Sequence[str], path: Path) -> None:
    """Rows normalised to the share of each true class's pixels (so rare classes show as clearly as
    common ones); the shares are printed in the cells when there are few enough classes to read them."""
    size = len(names)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(3.0 + 0.45 * size, 14.0)
    figure, canvas = _new_figure(width=side + 1.5, height=side)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    ticks = np.arange(size)
    labels_shown = size <= 40
    axes.set_xticks(ticks, labels=names if labels_shown else [], rotation=45, ha="right")
    axes.set_yticks(ticks, labels=names if labels_shown else [])
    axes.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (validation)")
    if size <= 12:
        for (row, col), share in np.ndenumerate(shares):
            axes.text(col, row, f"{share:.2f}", ha="center", va="center",
                      color="white" if share > 0.5 else "black", fontsize=9)
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


def _save(figure, canvas, path: Path, rect=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout(rect=rect)
    with staged_file(path) as temporary:
        canvas.print_png(str(temporary))


@contextmanager
def _atomic_open(path: Path, newline: Optional[str] = None) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed to `path` when the block succeeds."""
    with staged_file(path) as temporary:
        with open(str(temporary), "w", encoding="utf-8", newline=newline) as handle:
            yield handle


def read_metrics(out_dir: Path) -> List[EpochRecord]:
    """The records a previous `write_metrics` left (tests and resumed runs read them back)."""
    raw = json.loads((out_dir / METRICS_JSON).read_text(encoding="utf-8"))
    return [EpochRecord.from_dict(r) for r in raw]


@dataclass(frozen=True)
class Examples:
    """A few validation images (HxWx3 uint8) with their true and predicted masks (HxW uint8 class ids)."""

    images: Sequence[np.ndarray]
    truths: Sequence[np.ndarray]
    predicted: Sequence[np.ndarray]


def write_outputs(out_dir: Path, history: History, config,
                  examples: Optional[Examples] = None) -> Path:
    """Everything output/data holds at the end of a run, from the run's history:
    metrics.csv/json, training_curves.png, the best epoch's confusion matrix (CSV and PNG), the prediction
    examples when given, and report.html showing them all. `config` is the run's TrainingConfig. Returns
    the report's path."""
    from segmaker import report

    records = history.records
    names = class_names_or_default(config.class_names, config.num_classes)
    write_metrics(records, out_dir, names)
    if records:
        plot_curves(records, out_dir / CURVES_PNG)
    confusion = history.best_confusion()
    if confusion is not None:
        write_confusion(confusion[1], names, out_dir)
    if examples is not None and examples.images:
        plot_predictions(examples.images, examples.truths, examples.predicted, config.num_classes,
                         out_dir / PREDICTIONS_PNG, names)
    return report.write(_report(out_dir, records, names, confusion, config), out_dir / report.REPORT_HTML)


def _report(out_dir: Path, records: Sequence[EpochRecord], names: Sequence[str],
            confusion: Optional[Tuple[int, np.ndarray]], config):
    from segmaker.report import Report, Section

    best = _best_record(records, confusion)
    summary = [
        ("model", f"{config.algorithm} on {config.backbone}, {config.num_classes} classes"),
        ("epochs trained", str(len(records))),
        ("final train loss", _number(records[-1].train_loss) if records else "-"),
    ]
    if best is not None:
        summary.append(("best epoch", f"{best.epoch}: mIOU {_number(best.mIOU)}, Dice {_number(best.dice)}, "
                                      f"pixel accuracy {_number(best.pixel_accuracy)}"))
    sections = [Section("Training curves", picture=out_dir / CURVES_PNG, alt="loss and mIOU per epoch")]
    sections.append(_per_class_section(best, names, confusion))
    if confusion is not None:
        sections.append(Section(
            f"Confusion matrix (epoch {confusion[0]})",
            note="Rows: the true class; columns: the predicted class; cells: share of the true class's "
                 "pixels.",
            table=_confusion_table(confusion[1], names) if len(names) <= 12 else None,
            picture=out_dir / CONFUSION_PNG, alt="confusion matrix"))
    sections.append(Section("Prediction examples", note="Validation images, the true mask and the best "
                            "model's prediction over them.", picture=out_dir / PREDICTIONS_PNG,
                            alt="validation images with true and predicted masks"))
    sections.append(_epochs_section(records))
    return Report("segmaker training report", summary, sections)


def _best_record(records: Sequence[EpochRecord], confusion) -> Optional[EpochRecord]:
    validated = [r for r in records if r.mIOU is not None]
    if confusion is not None:
        validated = [r for r in validated if r.epoch == confusion[0]] or validated
    return max(validated, key=lambda r: r.mIOU) if validated else None


def _per_class_section(best: Optional[EpochRecord], names: Sequence[str], confusion):
    from segmaker.report import Section, Table

    if best is None or best.iou_per_class is None:
        return Section("Per-class scores", note="No validation channel: no per-class scores.")
    labelled = confusion[1].sum(axis=1) if confusion is not None else None
    rows = []
    for k, name in enumerate(names):
        share = f"{labelled[k] / max(labelled.sum(), 1):.1%}" if labelled is not None else "-"
        rows.append([name, _number(best.iou_per_class[k]), _number(best.dice_per_class[k]), share])
    return Section(f"Per-class scores (epoch {best.epoch})",
                   note="'-': the class is in neither the labels nor the predictions of the validation set.",
                   table=Table(["class", "IoU", "Dice", "share of labelled pixels"], rows))


def _confusion_table(counts: np.ndarray, names: Sequence[str]):
    from segmaker.report import Table

    rows = [[name, *(str(int(v)) for v in row)] for name, row in zip(names, counts)]
    return Table(["true \\ predicted (pixels)", *names], rows)


def _epochs_section(records: Sequence[EpochRecord]):
    from segmaker.report import Section, Table

    header = ["epoch", "train loss", "pixel accuracy", "mIOU", "Dice", "learning rate", "samples/s",
              "seconds"]
    rows = [[str(r.epoch), _number(r.train_loss), _number(r.pixel_accuracy), _number(r.mIOU), _number(r.dice),
             f"{r.lr:.3g}", f"{r.throughput:.1f}", f"{r.seconds:.1f}"] for r in records]
    return Section("Per-epoch metrics", table=Table(header, rows))


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"

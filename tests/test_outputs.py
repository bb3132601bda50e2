import csv
import json

import numpy as np
import pytest
from PIL import Image

from segmaker.outputs import (
    EpochRecord,
    overlay,
    plot_curves,
    plot_predictions,
    read_metrics,
    write_metrics,
)

RECORDS = [
    EpochRecord(0, 1.2, 10.5, 0.7, 0.4, 0.5, 0.01, 12.0),
    EpochRecord(1, 0.8, 11.0, 0.8, 0.55, 0.65, 0.005, 11.5),
]


def test_metrics_table_as_csv_and_json(tmp_path):
    write_metrics(RECORDS, tmp_path)
    with open(str(tmp_path / "metrics.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["mIOU"]) == 0.55
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "throughput",
        "pixel_accuracy",
        "mIOU",
        "dice",
        "lr",
        "seconds",
    ]
    assert read_metrics(tmp_path) == RECORDS
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_validation_metrics_are_empty_cells(tmp_path):
    write_metrics([EpochRecord(0, 1.0, 5.0, None, None, None, 0.1, 3.0)], tmp_path)
    row = next(csv.DictReader(open(str(tmp_path / "metrics.csv"), newline="")))
    assert row["mIOU"] == "" and row["train_loss"] == "1.0"


def test_curves_png(tmp_path):
    path = tmp_path / "plots" / "curves.png"
    plot_curves(RECORDS, path)
    with Image.open(str(path)) as image:
        assert image.format == "PNG" and image.width > 300


def test_prediction_grid_has_one_row_per_image(tmp_path):
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 255, (40, 60, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((40, 60), np.uint8), np.ones((40, 60), np.uint8)]
    path = tmp_path / "grid.png"
    plot_predictions(images, masks, masks[::-1], num_classes=2, path=path)
    with Image.open(str(path)) as one_row_grid:
        height_two_rows = one_row_grid.height
    plot_predictions(images[:1], masks[:1], masks[:1], num_classes=2, path=path)
    with Image.open(str(path)) as grid:
        assert height_two_rows > 1.5 * grid.height


def test_overlay_leaves_ignored_pixels_and_tints_classes():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[255, 0], [1, 1]], np.uint8)
    tinted = overlay(image, mask, num_classes=2)
    assert (tinted[0, 0] == 100).all()
    assert not (tinted[0, 1] == 100).all()
    assert not np.array_equal(tinted[0, 1], tinted[1, 0])
    assert np.array_equal(tinted[1, 0], tinted[1, 1])


@pytest.mark.parametrize("num_classes", [2, 3, 10, 20, 40])
def test_class_colours_are_distinct_enough_to_tell_classes_apart(num_classes):
    from segmaker.outputs import class_colours

    colours = class_colours(num_classes)
    assert colours.shape == (num_classes, 3)
    pairs = [(a, b) for a in range(num_classes) for b in range(a + 1, num_classes)]
    closest = min(float(np.abs(colours[a] - colours[b]).max()) for a, b in pairs)
    assert closest >= (30 if num_classes <= 10 else 15)  # tab20's light shades sit closer together


def _matrix(counts):
    from segmaker.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(len(counts))
    matrix.counts = np.array(counts, dtype=np.int64)
    return matrix


def test_per_class_columns_in_csv_and_json_under_the_class_names(tmp_path):
    # true background: 8 right, 2 called pet; true pet: 1 called background, 4 right; class "other" absent.
    record = EpochRecord.of_epoch(0, 0.5, 9.0, 0.01, 3.0, _matrix([[8, 2, 0], [1, 4, 0], [0, 0, 0]]))
    assert record.mIOU == pytest.approx((8 / 11 + 4 / 7) / 2)
    write_metrics([record], tmp_path, ["background", "pet", "other"])
    row = next(csv.DictReader(open(str(tmp_path / "metrics.csv"), newline="")))
    assert float(row["IoU_background"]) == pytest.approx(8 / 11)
    assert float(row["IoU_pet"]) == pytest.approx(4 / 7) and float(row["Dice_pet"]) == pytest.approx(8 / 11)
    assert row["IoU_other"] == "" and row["Dice_other"] == ""
    import json

    saved = json.loads((tmp_path / "metrics.json").read_text())[0]
    assert saved["iou_per_class"] == {"background": pytest.approx(8 / 11), "pet": pytest.approx(4 / 7),
                                      "other": None}
    assert read_metrics(tmp_path) == [record]  # names in the JSON, back to a tuple in class order


def test_history_keeps_one_confusion_matrix_the_best_epochs():
    from segmaker.outputs import History

    history = History()
    for epoch, best in ((0, True), (1, True), (2, False)):
        record = EpochRecord.of_epoch(epoch, 1.0, 1.0, 0.1, 1.0, _matrix([[epoch + 1, 0], [0, 1]]))
        history = history.add(record, _matrix([[epoch + 1, 0], [0, 1]]) if best else None)
    rows = history.to_rows()
    assert ["confusion_matrix" in row for row in rows] == [False, True, False]
    epoch, counts = history.best_confusion()
    assert epoch == 1 and counts.tolist() == [[2, 0], [0, 1]]
    assert EpochRecord.from_dict(rows[1]).epoch == 1  # the extra key does not disturb the record
    # What a checkpoint stores (JSON) parses back into the same records and matrix.
    assert History.from_rows(json.loads(json.dumps(rows))) == history


def _written_run(tmp_path, with_examples=True):
    from segmaker.config import TrainingConfig
    from segmaker.outputs import Examples, History, write_outputs

    config = TrainingConfig(num_classes=3, class_names=("background", "cat", "dog"))
    history = History()
    epochs = ([[50, 30, 20], [10, 5, 5], [5, 5, 10]], [[90, 5, 5], [2, 16, 2], [1, 1, 18]])
    for epoch, counts in enumerate(epochs):
        record = EpochRecord.of_epoch(epoch, 1.0 - 0.3 * epoch, 12.0, 0.01, 2.0, _matrix(counts))
        history = history.add(record, _matrix(counts))
    rng = np.random.RandomState(1)
    image = rng.randint(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 2
    examples = Examples([image], [mask], [mask]) if with_examples else None
    return write_outputs(tmp_path, history, config, examples), history


def test_report_is_one_self_contained_page_with_every_part(tmp_path):
    report, _ = _written_run(tmp_path)
    assert report == tmp_path / "report.html"
    page = report.read_text(encoding="utf-8")
    for name in ("metrics.csv", "training_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
                 "validation_predictions.png"):
        assert (tmp_path / name).exists(), name
    assert page.count("data:image/png;base64,") == 3  # curves, confusion matrix, predictions: all inside
    assert "src=\"http" not in page and "<script" not in page and "<link" not in page
    # the best epoch (1): dog IoU = 18 / (18 + 2 + 7) and its pixel counts
    assert "Per-class scores (epoch 1)" in page and f"{18 / 27:.4f}" in page
    assert "<td class=\"name\">dog</td><td>1</td><td>1</td><td>18</td>" in page
    with open(str(tmp_path / "confusion_matrix.csv"), newline="") as handle:
        assert list(csv.reader(handle))[3] == ["dog", "1", "1", "18"]


def test_report_without_validation_says_so(tmp_path):
    from segmaker.config import TrainingConfig
    from segmaker.outputs import History, write_outputs

    history = History().add(EpochRecord.of_epoch(0, 0.7, 3.0, 0.01, 1.0, None))
    page = write_outputs(tmp_path, history, TrainingConfig(num_classes=2)).read_text()
    assert "No validation channel" in page and "data:image/png;base64," in page

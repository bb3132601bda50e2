import csv

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

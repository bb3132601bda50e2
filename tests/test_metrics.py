import re

import numpy as np
import pytest

from segmaker.metrics import (
    METRIC_DEFINITIONS,
    ConfusionMatrix,
    metric_definitions,
    progress_line,
    train_loss_line,
    train_throughput_line,
    validation_line,
    validation_lines,
)

# 3 classes, 255 = ignore. Label / prediction pairs counted by hand:
#   label 0: pred 0, 0, 1      -> (0,0)=2, (0,1)=1
#   label 1: pred 1, 1         -> (1,1)=2
#   label 2: pred 0            -> (2,0)=1
#   label 255: pred 2, 2       -> not counted
LABEL = np.array([[0, 0, 0, 1], [1, 2, 255, 255]], np.uint8)
PRED = np.array([[0, 0, 1, 1], [1, 0, 2, 2]], np.uint8)


def hand_matrix() -> ConfusionMatrix:
    matrix = ConfusionMatrix(3)
    matrix.update(PRED, LABEL)
    return matrix


def test_counts_ignore_255():
    expected = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(hand_matrix().counts, expected)
    assert hand_matrix().counts.dtype == np.int64


def test_pixel_accuracy():
    assert hand_matrix().pixel_accuracy() == pytest.approx(4 / 6)


def test_iou_and_dice_by_hand():
    matrix = hand_matrix()
    # class 0: TP 2, FP 1 (label 2), FN 1 -> IoU 2/4, Dice 4/6
    # class 1: TP 2, FP 1 (label 0), FN 0 -> IoU 2/3, Dice 4/5
    # class 2: TP 0, FP 0, FN 1           -> IoU 0,   Dice 0
    np.testing.assert_allclose(matrix.iou_per_class(), [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(matrix.dice_per_class(), [4 / 6, 4 / 5, 0.0])
    assert matrix.mean_iou() == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert matrix.dice() == pytest.approx((4 / 6 + 4 / 5) / 3)


def test_absent_class_is_skipped_not_nan():
    matrix = ConfusionMatrix(4)
    matrix.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    # classes 2 and 3 appear nowhere: the mean is over classes 0 and 1 only.
    assert matrix.mean_iou() == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert np.isnan(matrix.iou_per_class()[2:]).all()
    assert not np.isnan(matrix.dice())


def test_all_ignored_gives_zero_scores():
    matrix = ConfusionMatrix(2)
    matrix.update(np.array([0, 1]), np.array([255, 255]))
    assert matrix.scores() == {"pixel_accuracy": 0.0, "mIOU": 0.0, "dice": 0.0}


def test_merge_equals_one_matrix_over_all_pixels():
    first, second = ConfusionMatrix(3), ConfusionMatrix(3)
    first.update(PRED[0], LABEL[0])
    second.update(PRED[1], LABEL[1])
    np.testing.assert_array_equal((first + second).counts, hand_matrix().counts)
    assert first.merge(second).mean_iou() == pytest.approx(hand_matrix().mean_iou())


def test_merge_refuses_other_class_count():
    with pytest.raises(ValueError, match="3 and 2 classes"):
        ConfusionMatrix(3).merge(ConfusionMatrix(2))


def test_class_id_out_of_range_is_named():
    with pytest.raises(ValueError, match="class id 7"):
        ConfusionMatrix(3).update(np.array([7]), np.array([0]))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="pixels"):
        ConfusionMatrix(3).update(np.zeros(4), np.zeros(5))


def test_log_lines_byte_for_byte():
    assert (train_loss_line("algo-1", 0, 1.47571)
            == "#quality_metric. host: algo-1, epoch: 0, train loss: 1.4757 .")
    assert (train_throughput_line("algo-1", 0, 55.0412)
            == "#throughput_metric. host: algo-1, epoch: 0, train throughput: 55.04 samples/sec.")
    assert (validation_line("algo-1", 0, "mIOU", 0.50641)
            == "#quality_metric. host: algo-1, epoch: 0, validation mIOU: 0.5064 .")
    assert progress_line("algo-1", 1, 10) == "#progress_metric: host=algo-1, completed 10 % of epochs"


def test_validation_lines_in_builtin_order():
    lines = validation_lines("algo-2", 3, hand_matrix())
    names = [line.split("validation ")[1].split(":")[0] for line in lines]
    assert names == ["pixel_accuracy", "mIOU", "dice"]
    assert lines[0] == "#quality_metric. host: algo-2, epoch: 3, validation pixel_accuracy: 0.6667 ."


def test_metric_definitions_match_the_lines():
    lines = [
        train_loss_line("algo-1", 0, 1.4757),
        train_throughput_line("algo-1", 0, 55.04),
        validation_line("algo-1", 0, "pixel_accuracy", 0.8472),
        validation_line("algo-1", 0, "mIOU", 0.5064),
        validation_line("algo-1", 0, "dice", 0.6001),
    ]
    log = "\n".join(lines + [progress_line("algo-1", 1, 10)])
    found = {d["Name"]: re.findall(d["Regex"], log) for d in METRIC_DEFINITIONS}
    assert found == {
        "train:loss": ["1.4757"],
        "train:throughput": ["55.04"],
        "validation:pixel_accuracy": ["0.8472"],
        "validation:mIOU": ["0.5064"],
        "validation:dice": ["0.6001"],
    }


def test_metric_definitions_copy_is_independent():
    copy = metric_definitions()
    copy[0]["Name"] = "changed"
    assert METRIC_DEFINITIONS[0]["Name"] == "train:loss"


def test_per_class_scores_by_hand_with_an_absent_class_as_none():
    """Classes 0, 1 present, class 2 absent from label and prediction: its scores are None, not NaN or 0."""
    from segmaker.metrics import per_class_scores, per_class_table

    matrix = ConfusionMatrix(3)
    # label:      0 0 0 1 1 255
    # prediction: 0 0 1 1 1 0
    matrix.update(np.array([0, 0, 1, 1, 1, 0]), np.array([0, 0, 0, 1, 1, 255]))
    scores = per_class_scores(matrix)
    # class 0: TP 2, FP 0, FN 1 -> IoU 2/3, Dice 4/5; class 1: TP 2, FP 1, FN 0 -> IoU 2/3, Dice 4/5
    assert scores["iou"][:2] == pytest.approx([2 / 3, 2 / 3]) and scores["iou"][2] is None
    assert scores["dice"][:2] == pytest.approx([0.8, 0.8]) and scores["dice"][2] is None
    table = per_class_table(matrix, ["bg", "pet", "other"])
    assert "pet    0.6667  0.8000   40.0%" in table and "other    -       -" in table

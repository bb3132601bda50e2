"""What training checks and derives from the classes in its masks: the first-epoch check, balanced weights."""

import logging

import numpy as np
import pytest
from PIL import Image

from segmaker import cli
from segmaker.errors import UserError
from segmaker.training.class_weights import check_training_classes
from segmaker.training.epoch import EpochStats
from tests.synthetic import write_opt_ml


def test_masks_with_only_background_and_ignore_are_refused():
    with pytest.raises(UserError, match=r"only class 0 \(120 pixels\) and ignore"):
        check_training_classes((120, 0, 0), 3)


def test_a_class_without_training_pixels_is_named(caplog):
    with caplog.at_level(logging.WARNING):
        check_training_classes((50, 0, 7, 0), 4)
    assert "No training pixels of class 1, 3 in the first epoch (of 4 classes)" in caplog.text


def test_every_class_present_is_quiet(caplog):
    with caplog.at_level(logging.WARNING):
        check_training_classes((5, 1, 2), 3)
    assert "No training pixels" not in caplog.text


def test_class_pixels_of_epoch_parts_add_up_and_survive_json():
    total = EpochStats(class_pixels=(1, 2)) + EpochStats(class_pixels=[3, 4]) + EpochStats()
    assert total.class_pixels == (4, 6)


@pytest.mark.slow
def test_a_job_whose_masks_hold_only_background_fails_with_that_reason(tmp_path, monkeypatch, capsys):
    """0/255 masks read with the default scale map: 255 is ignore, so only class 0 is left. The job fails
    after the first epoch naming the reason; class_weights=balanced logs the counted pixels first."""
    hyperparameters = {
        "use_pretrained_model": "False",
        "crop_size": 32,
        "base_size": 32,
        "epochs": 2,
        "mini_batch_size": 2,
        "data_workers": 1,
        "class_weights": "balanced",
    }
    paths = write_opt_ml(tmp_path, num_classes=2, train=2, validation=0, hyperparameters=hyperparameters)
    for mask_file in paths.channel_dir("train_annotation").iterdir():
        mask = np.asarray(Image.open(str(mask_file)))
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(str(mask_file))
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(paths.base))
    assert cli.main(["train"]) == cli.EXIT_USER_ERROR
    assert "hold only class 0" in paths.failure_file.read_text()
    assert "class_weights = balanced: pixels per class [" in capsys.readouterr().out


def test_balanced_weights_are_refused_in_pipe_mode_with_the_formula():
    from types import SimpleNamespace

    from segmaker.config import parse_hyperparameters
    from segmaker.training.class_weights import resolve_class_weights

    pipe_feed = SimpleNamespace(data=SimpleNamespace(train=SimpleNamespace(files=None)))
    config = parse_hyperparameters({"num_classes": 2, "class_weights": "balanced"})
    with pytest.raises(UserError, match=r"needs the train channel in File mode.*median\(f\) / f_c"):
        resolve_class_weights(config, pipe_feed)
    listed = parse_hyperparameters({"num_classes": 2, "class_weights": "1,4"})
    assert resolve_class_weights(listed, pipe_feed).tolist() == [1.0, 4.0]
    assert resolve_class_weights(parse_hyperparameters({"num_classes": 2}), pipe_feed) is None

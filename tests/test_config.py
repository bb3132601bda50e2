import dataclasses

import pytest

from segmaker.config import PARSERS, TrainingConfig, parse_hyperparameters
from segmaker.errors import UserError


def problems_of(raw) -> str:
    with pytest.raises(UserError) as caught:
        parse_hyperparameters(raw)
    return str(caught.value)


def test_every_config_field_has_a_parser():
    assert set(PARSERS) == {f.name for f in dataclasses.fields(TrainingConfig)}


def test_defaults_are_the_built_in_ones():
    config = parse_hyperparameters({"num_classes": "21"})
    assert config == TrainingConfig(num_classes=21)
    assert (config.backbone, config.algorithm, config.crop_size, config.base_size) == (
        "resnet50",
        "fcn",
        240,
        520,
    )
    assert (config.epochs, config.learning_rate, config.mini_batch_size, config.optimizer) == (
        10,
        0.001,
        16,
        "sgd",
    )
    assert config.aux_loss and config.aux_weight == 0.5 and config.data_workers is None


def test_sagemaker_string_values_and_json_typed_values_agree():
    strings = {
        "num_classes": "5",
        "epochs": "3",
        "learning_rate": "0.01",
        "syncbn": "True",
        "momentum": "0.8",
    }
    typed = {"num_classes": 5, "epochs": 3, "learning_rate": 0.01, "syncbn": True, "momentum": 0.8}
    assert parse_hyperparameters(strings) == parse_hyperparameters(typed)


@pytest.mark.parametrize("text,expected", [("True", True), ("true", True), ("FALSE", False), ("0", False)])
def test_booleans_are_case_insensitive(text, expected):
    assert parse_hyperparameters({"num_classes": "2", "early_stopping": text}).early_stopping is expected


@pytest.mark.parametrize(
    "name,normalised", [("resnet-50", "resnet50"), ("resnet101", "resnet101"), ("ResNet-101", "resnet101")]
)
def test_backbone_names_are_normalised(name, normalised):
    assert parse_hyperparameters({"num_classes": "2", "backbone": name}).backbone == normalised


@pytest.mark.parametrize("given,rounded", [("240", 240), ("241", 248), ("17", 24), (64, 64)])
def test_crop_size_is_rounded_up_to_a_multiple_of_8(given, rounded):
    assert parse_hyperparameters({"num_classes": "2", "crop_size": given}).crop_size == rounded


def test_step_schedule_epochs_are_parsed_and_sorted():
    config = parse_hyperparameters(
        {"num_classes": "2", "lr_scheduler": "step", "lr_scheduler_step": "20, 10"}
    )
    assert config.lr_scheduler_step == (10, 20)


def test_whole_floats_from_tuning_jobs_are_integers_but_fractions_are_not():
    assert parse_hyperparameters({"num_classes": "2", "epochs": "4.0"}).epochs == 4
    assert "epochs = '4.5'" in problems_of({"num_classes": "2", "epochs": "4.5"})


def test_private_and_sagemaker_keys_are_ignored():
    raw = {"num_classes": "2", "_tuning_objective_metric": "validation:mIOU", "sagemaker_program": "x"}
    assert parse_hyperparameters(raw) == TrainingConfig(num_classes=2)


def test_data_workers_auto_or_positive():
    assert parse_hyperparameters({"num_classes": "2", "data_workers": "auto"}).data_workers is None
    assert parse_hyperparameters({"num_classes": "2", "data_workers": "3"}).data_workers == 3
    assert "data_workers = '0': must be \"auto\" or a positive integer" in problems_of(
        {"num_classes": "2", "data_workers": "0"}
    )


def test_unknown_key_names_the_closest_valid_name():
    message = problems_of({"num_classes": "2", "learningrate": "0.1"})
    assert "unknown hyperparameter 'learningrate'" in message and "did you mean 'learning_rate'" in message


def test_every_problem_is_reported_in_one_message():
    message = problems_of(
        {
            "epoch": "3",
            "learning_rate": "2",
            "optimizer": "lbfgs",
            "early_stopping": "maybe",
            "lr_scheduler": "step",
            "num_classes": "255",
            "use_pretrained_model": 1.5,
        }
    )
    assert "did you mean 'epochs'" in message
    assert "learning_rate = '2': must be a number in (0.0, 1.0]" in message
    assert "optimizer = 'lbfgs': must be one of sgd, adam, adagrad, nag, rmsprop" in message
    assert "early_stopping = 'maybe': must be True or False" in message
    assert "num_classes = '255': must be an integer in [2, 254]" in message
    assert "use_pretrained_model = 1.5" in message
    assert "lr_scheduler_step is required" in message
    # An invalid num_classes is reported once, as invalid, not also as missing.
    assert "num_classes is required" not in message


def test_missing_num_classes_is_an_error():
    assert "num_classes is required" in problems_of({"epochs": "3"})


def test_a_json_boolean_is_not_an_integer():
    assert "epochs = True" in problems_of({"num_classes": 2, "epochs": True})


def test_json_dict_round_trips():
    config = parse_hyperparameters(
        {
            "num_classes": "4",
            "lr_scheduler": "step",
            "lr_scheduler_step": "5,7",
            "data_workers": "2",
            "seed": "3",
        }
    )
    assert parse_hyperparameters(config.to_json_dict()) == config
    assert parse_hyperparameters(TrainingConfig(num_classes=2).to_json_dict()) == TrainingConfig(
        num_classes=2
    )


def test_an_empty_step_list_with_the_step_schedule_is_missing():
    assert "lr_scheduler_step is required" in problems_of(
        {"num_classes": "2", "lr_scheduler": "step", "lr_scheduler_step": ""}
    )


def test_class_names_are_comma_separated_one_per_class():
    config = parse_hyperparameters({"num_classes": "3", "class_names": "background, cat ,dog"})
    assert config.class_names == ("background", "cat", "dog")
    assert parse_hyperparameters(config.to_json_dict()) == config
    assert parse_hyperparameters({"num_classes": 2, "class_names": ["a", "b"]}).class_names == ("a", "b")
    assert "2 names, but num_classes is 3" in problems_of({"num_classes": "3", "class_names": "a,b"})
    assert "class_names = 'a,a'" in problems_of({"num_classes": "2", "class_names": "a,a"})


def test_loss_and_class_weights():
    raw = {"num_classes": "3", "loss": "cross_entropy+dice", "class_weights": "1, 5,0.5"}
    config = parse_hyperparameters(raw)
    assert config.loss == "cross_entropy+dice" and config.class_weights == (1.0, 5.0, 0.5)
    assert parse_hyperparameters(config.to_json_dict()) == config
    assert parse_hyperparameters({"num_classes": 2, "class_weights": "Balanced"}).class_weights == "balanced"
    assert parse_hyperparameters({"num_classes": 2, "class_weights": [1, 3]}).class_weights == (1.0, 3.0)
    default = TrainingConfig(num_classes=2)
    assert default.class_weights is None and default.loss == "cross_entropy"


def test_class_weights_errors_name_the_key_and_the_class_count():
    message = problems_of({"num_classes": "3", "class_weights": "1,2", "loss": "focal"})
    assert "class_weights has 2 weights but num_classes is 3" in message
    assert "loss = 'focal': must be one of cross_entropy, dice, cross_entropy+dice" in message
    assert "class_weights = '1,x': must be" in problems_of({"num_classes": "2", "class_weights": "1,x"})
    assert "not all 0" in problems_of({"num_classes": "2", "class_weights": "0,0"})
    assert "class_weights = '-1,2'" in problems_of({"num_classes": "2", "class_weights": "-1,2"})


def test_image_scale_is_base_size_or_native():
    assert parse_hyperparameters({"num_classes": "3"}).image_scale == "base_size"
    assert parse_hyperparameters({"num_classes": "3", "image_scale": "Native"}).image_scale == "native"
    with pytest.raises(UserError, match="image_scale.*one of base_size, native"):
        parse_hyperparameters({"num_classes": "3", "image_scale": "full"})

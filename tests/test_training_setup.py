"""Set-up failures that `segmaker train` reports before any training step (fast: no network is trained)."""

import json

import pytest

from segmaker import cli
from tests.synthetic import write_opt_ml

FAST = {"use_pretrained_model": "False", "crop_size": 32, "base_size": 48, "data_workers": 1}


@pytest.fixture
def train(monkeypatch):
    def run(paths) -> int:
        monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(paths.base))
        return cli.main(["train"])

    return run


def test_float16_on_the_cpu_is_a_user_error(tmp_path, train):
    paths = write_opt_ml(
        tmp_path, train=2, validation=0, hyperparameters=dict(FAST, precision_dtype="float16")
    )
    assert train(paths) == cli.EXIT_USER_ERROR
    assert "precision_dtype float16 needs GPUs" in paths.failure_file.read_text()


def test_several_hosts_are_refused_naming_them(tmp_path, train):
    paths = write_opt_ml(tmp_path, train=2, validation=0, hyperparameters=FAST)
    resources = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
    paths.resource_config_file.write_text(json.dumps(resources))
    assert train(paths) == cli.EXIT_USER_ERROR
    assert "algo-1, algo-2" in paths.failure_file.read_text()


def test_missing_pretrained_weights_name_every_place_looked_in(tmp_path, train, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet_home"))
    paths = write_opt_ml(
        tmp_path / "job", train=2, validation=0, hyperparameters=dict(FAST, use_pretrained_model="True")
    )
    assert train(paths) == cli.EXIT_USER_ERROR
    reason = paths.failure_file.read_text()
    assert "resnet50_v1s" in reason and str(tmp_path / "mxnet_home") in reason


def test_pipe_mode_without_num_training_samples_is_a_user_error(tmp_path, train):
    paths = write_opt_ml(tmp_path, train=2, validation=0, hyperparameters=FAST)
    config = {"train": {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO"}}
    paths.input_data_config_file.write_text(json.dumps(config))
    assert train(paths) == cli.EXIT_USER_ERROR
    assert "num_training_samples is required" in paths.failure_file.read_text()

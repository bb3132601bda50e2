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


def test_a_parameter_server_kvstore_on_one_host_is_a_user_error(tmp_path, train):
    paths = write_opt_ml(tmp_path, train=2, validation=0, hyperparameters=dict(FAST, kvstore="dist_sync"))
    assert train(paths) == cli.EXIT_USER_ERROR
    assert "kvstore dist_sync needs several hosts (instance_count >= 2)" in paths.failure_file.read_text()


def test_a_host_that_never_resolves_fails_the_job_naming_it(tmp_path, train, monkeypatch):
    monkeypatch.setenv("SEGMAKER_HOST_WAIT_SECONDS", "0.5")
    paths = write_opt_ml(tmp_path, train=2, validation=0, hyperparameters=FAST)
    resources = {"current_host": "localhost", "hosts": ["localhost", "algo-9.invalid"]}
    paths.resource_config_file.write_text(json.dumps(resources))
    assert train(paths) == cli.EXIT_USER_ERROR
    assert "host algo-9.invalid could not be resolved within 0 s" in paths.failure_file.read_text()


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


CPU_SYNCBN_SETTINGS = ("MXNET_CPU_WORKER_NTHREADS", "MXNET_CPU_TEMP_COPY", "MXNET_CPU_PARALLEL_RAND_COPY")


def test_syncbn_with_a_batch_the_devices_cannot_share_equally_is_a_user_error(tmp_path, train, monkeypatch):
    """MXNet's SyncBatchNorm averages the devices' statistics with equal weights: 3 images on 2 devices
    would weigh the lone image as much as the pair."""
    monkeypatch.setenv("SEGMAKER_CPU_DEVICES", "2")
    paths = write_opt_ml(tmp_path, train=4, validation=0,
                         hyperparameters=dict(FAST, syncbn="True", mini_batch_size=3))
    assert train(paths) == cli.EXIT_USER_ERROR
    reason = paths.failure_file.read_text()
    assert "syncbn needs every device to hold as many images: mini_batch_size 3" in reason


def test_syncbn_on_cpu_contexts_refuses_an_mxnet_loaded_without_its_settings(tmp_path, train, monkeypatch):
    """In this process MXNet loaded before `segmaker train` could export the settings (a deadlock risk,
    tests/test_syncbn_cpu.py): it says so instead of training. Through `segmaker train` in its own process
    it trains (test_training_integration.py)."""
    import mxnet  # noqa: F401 - loaded before `segmaker train` runs, as in any test process

    for key in CPU_SYNCBN_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SEGMAKER_CPU_DEVICES", "2")
    paths = write_opt_ml(tmp_path, train=4, validation=0,
                         hyperparameters=dict(FAST, syncbn="True", mini_batch_size=4))
    assert train(paths) == cli.EXIT_INTERNAL_ERROR
    reason = paths.failure_file.read_text()
    assert "syncbn over 2 CPU contexts needs MXNet's engine settings" in reason
    assert "MXNET_CPU_TEMP_COPY" in reason

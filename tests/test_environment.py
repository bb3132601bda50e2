import json

import pytest

from segmaker import environment as env
from segmaker.errors import UserError
from segmaker.training.devices import worker_role


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_base_dir_from_environment_or_default(tmp_path):
    assert env.paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)}).base == tmp_path
    assert str(env.paths_from_env({}).base) == "/opt/ml"


def test_paths_follow_the_opt_ml_layout(tmp_path):
    paths = env.Paths(tmp_path)
    assert paths.hyperparameters_file == tmp_path / "input/config/hyperparameters.json"
    assert paths.channel_dir("train") == tmp_path / "input/data/train"
    assert paths.pipe_path("train", 3) == tmp_path / "input/data/train_3"
    assert paths.failure_file == tmp_path / "output/failure"
    assert paths.output_data_dir == tmp_path / "output/data"


def test_missing_hyperparameters_file_is_empty(tmp_path):
    assert env.read_hyperparameters(env.Paths(tmp_path)) == {}


def test_hyperparameters_that_are_not_an_object_name_the_file(tmp_path):
    paths = env.Paths(tmp_path)
    write_json(paths.hyperparameters_file, ["num_classes", 2])
    with pytest.raises(UserError, match="hyperparameters.json must hold a JSON object"):
        env.read_hyperparameters(paths)


def test_broken_json_names_the_file(tmp_path):
    paths = env.Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.hyperparameters_file.write_text("{num_classes: 2")
    with pytest.raises(UserError, match="hyperparameters.json is not valid JSON"):
        env.read_hyperparameters(paths)


def test_input_data_config_reads_pipe_channels(tmp_path):
    paths = env.Paths(tmp_path)
    write_json(paths.input_data_config_file, {
        "train": {"TrainingInputMode": "Pipe", "ContentType": "application/x-recordio",
                  "RecordWrapperType": "RecordIO", "S3DistributionType": "FullyReplicated"},
        "validation": {"TrainingInputMode": "File"},
    })
    channels = env.read_input_data_config(paths)
    assert channels["train"].is_pipe and channels["train"].record_wrapper_type == "RecordIO"
    assert not channels["validation"].is_pipe


def test_without_input_data_config_every_data_folder_is_a_file_channel(tmp_path):
    paths = env.Paths(tmp_path)
    (paths.data_dir / "train").mkdir(parents=True)
    (paths.data_dir / "train_annotation").mkdir()
    assert sorted(env.read_input_data_config(paths)) == ["train", "train_annotation"]


def test_resource_config_defaults_to_one_host(tmp_path):
    config = env.read_resource_config(env.Paths(tmp_path))
    summary = (config.current_host, config.rank, config.world_size, worker_role(config).is_main)
    assert summary == ("algo-1", 0, 1, True)


def test_resource_config_rank_follows_sorted_hosts(tmp_path):
    paths = env.Paths(tmp_path)
    write_json(paths.resource_config_file, {"current_host": "algo-2", "hosts": ["algo-2", "algo-1"]})
    config = env.read_resource_config(paths)
    assert config.hosts == ["algo-1", "algo-2"] and config.rank == 1 and not worker_role(config).is_main


def test_checkpoint_dir_only_when_configured(tmp_path):
    paths = env.Paths(tmp_path)
    assert env.checkpoint_dir(paths) is None
    paths.checkpoints_dir.mkdir(parents=True)
    assert env.checkpoint_dir(paths) == paths.checkpoints_dir


@pytest.mark.parametrize("raw", ["0", "-2", "two"])
def test_cpu_devices_must_be_positive(raw):
    with pytest.raises(UserError, match="SEGMAKER_CPU_DEVICES"):
        env.cpu_device_count({"SEGMAKER_CPU_DEVICES": raw})


def test_cpu_syncbn_settings_scale_with_the_devices_and_keep_larger_values():
    """Workers per device (each CPU context has its own pool), and workspaces and random generators for
    every device's pass (all CPU contexts share one pool of each): environment.py says why."""
    assert env.mxnet_cpu_syncbn_environment(2, {}) == {
        "MXNET_CPU_WORKER_NTHREADS": "8", "MXNET_CPU_TEMP_COPY": "2048", "MXNET_CPU_PARALLEL_RAND_COPY": "8",
    }
    mine = {
        "MXNET_CPU_WORKER_NTHREADS": "2", "MXNET_CPU_TEMP_COPY": "9999", "MXNET_CPU_PARALLEL_RAND_COPY": "x",
    }
    settings = env.mxnet_cpu_syncbn_environment(3, mine)
    assert settings == {
        "MXNET_CPU_WORKER_NTHREADS": "8", "MXNET_CPU_TEMP_COPY": "9999", "MXNET_CPU_PARALLEL_RAND_COPY": "12",
    }
    assert env.mxnet_cpu_syncbn_ready(3, settings)
    assert not env.mxnet_cpu_syncbn_ready(4, settings)
    assert not env.mxnet_cpu_syncbn_ready(2, {})


def test_serving_settings_from_environment(tmp_path):
    settings = env.read_serving_settings({
        "SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2.5", "SAGEMAKER_BASE_DIR": str(tmp_path),
    })
    assert (settings.port, settings.workers, settings.timeout_seconds) == (9000, 3, 60)
    assert settings.max_payload_mb == 2.5 and settings.model_dir == tmp_path / "model"


def test_bad_serving_setting_names_the_variable():
    with pytest.raises(UserError, match="SAGEMAKER_MODEL_SERVER_TIMEOUT"):
        env.read_serving_settings({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "soon"})


def test_payload_limit_defaults_to_the_builtins_10_mb():
    assert env.read_serving_settings({}).max_payload_mb == 10
    assert env.read_serving_settings({}).max_payload_bytes == 10 * 1024 * 1024

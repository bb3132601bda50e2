"""The /opt/ml contract: paths from one base directory and readers for SageMaker's config files.

This is the only module that reads `os.environ` or knows the layout of `/opt/ml`. Nothing happens at
import time; every reader takes the `Paths` (or an injected dict) so tests can pass their own.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from segmaker.errors import UserError

DEFAULT_BASE_DIR = "/opt/ml"


@dataclass(frozen=True)
class Paths:
    """Every path of the /opt/ml tree, relative to one base directory."""

    base: Path

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def checkpoint_config_file(self) -> Path:
        return self.config_dir / "checkpointconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    def channel_dir(self, channel: str) -> Path:
        """File/FastFile mode: the folder holding the channel's files."""
        return self.data_dir / channel

    def pipe_path(self, channel: str, epoch: int) -> Path:
        """Pipe mode: the FIFO SageMaker creates for `channel` in `epoch` (0-based)."""
        return self.data_dir / f"{channel}_{epoch}"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def checkpoints_dir(self) -> Path:
        return self.base / "checkpoints"


def paths_from_env(environ: Optional[Mapping[str, str]] = None) -> Paths:
    """Paths under `$SAGEMAKER_BASE_DIR`, or `/opt/ml` when it is not set."""
    env = os.environ if environ is None else environ
    return Paths(Path(env.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR))


def _read_json_object(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object, not {type(value).__name__}")
    return value


def read_hyperparameters(paths: Paths) -> Dict[str, object]:
    """The raw hyperparameters (strings as SageMaker sends them, or JSON-typed values); {} if absent."""
    if not paths.hyperparameters_file.exists():
        return {}
    return _read_json_object(paths.hyperparameters_file, "hyperparameters file")


@dataclass(frozen=True)
class ChannelConfig:
    """One entry of inputdataconfig.json."""

    name: str
    input_mode: str = "File"
    content_type: Optional[str] = None
    record_wrapper_type: Optional[str] = None
    s3_distribution_type: Optional[str] = None

    @property
    def is_pipe(self) -> bool:
        return self.input_mode.lower() == "pipe"


def read_input_data_config(paths: Paths) -> Dict[str, ChannelConfig]:
    """Channel configs by name.

    Without the file (a bare `docker run`), every folder under input/data is a File-mode channel.
    """
    if not paths.input_data_config_file.exists():
        if not paths.data_dir.is_dir():
            return {}
        return {p.name: ChannelConfig(p.name) for p in sorted(paths.data_dir.iterdir()) if p.is_dir()}
    raw = _read_json_object(paths.input_data_config_file, "input data config")
    return {name: _channel_config(name, entry or {}) for name, entry in raw.items()}


def _channel_config(name: str, entry: dict) -> ChannelConfig:
    return ChannelConfig(
        name=name,
        input_mode=str(entry.get("TrainingInputMode", "File")),
        content_type=entry.get("ContentType"),
        record_wrapper_type=entry.get("RecordWrapperType"),
        s3_distribution_type=entry.get("S3DistributionType"),
    )


@dataclass(frozen=True)
class ResourceConfig:
    """Which host this is and which hosts take part (sorted); one host when the file is absent."""

    current_host: str = "algo-1"
    hosts: List[str] = field(default_factory=lambda: ["algo-1"])
    network_interface_name: Optional[str] = None

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def world_size(self) -> int:
        return len(self.hosts)


def read_resource_config(paths: Paths) -> ResourceConfig:
    if not paths.resource_config_file.exists():
        return ResourceConfig()
    raw = _read_json_object(paths.resource_config_file, "resource config")
    current = str(raw.get("current_host", "algo-1"))
    hosts = sorted(str(h) for h in raw.get("hosts") or [current])
    if current not in hosts:
        raise UserError(f"resource config: current_host {current!r} is not among hosts {hosts}")
    return ResourceConfig(current, hosts, raw.get("network_interface_name"))


@dataclass(frozen=True)
class DistributedSettings:
    """How the hosts of a multi-host job find each other (SEGMAKER_* overrides, for tests and odd networks).

    `ps_port`: the scheduler's port on the first host (the SageMaker MXNet toolkit's default, 8000);
    `status_port`: each host's failure-notice port (our own side channel, see training.distributed);
    `host_wait_seconds`: how long hosts may take to resolve and to join (the toolkit's 15 minutes);
    `node_host`: the address this host announces (default: the address of `network_interface_name`).
    """

    ps_port: int = 8000
    status_port: int = 8001
    host_wait_seconds: float = 900.0
    node_host: Optional[str] = None


def read_distributed_settings(environ: Optional[Mapping[str, str]] = None) -> DistributedSettings:
    env = os.environ if environ is None else environ
    return DistributedSettings(
        ps_port=_positive_int(env, "SEGMAKER_PS_PORT", 8000),
        status_port=_positive_int(env, "SEGMAKER_STATUS_PORT", 8001),
        host_wait_seconds=_positive_float(env, "SEGMAKER_HOST_WAIT_SECONDS", 900.0),
        node_host=env.get("SEGMAKER_NODE_HOST") or None,
    )


def dmlc_environment(
    role: str, scheduler_address: str, num_hosts: int, settings: DistributedSettings, interface: Optional[str]
) -> Dict[str, str]:
    """The variables MXNet's parameter server (ps-lite) reads, as the SageMaker MXNet toolkit sets them:
    one scheduler, one server and one worker per host."""
    env = {
        "DMLC_ROLE": role,
        "DMLC_PS_ROOT_URI": scheduler_address,
        "DMLC_PS_ROOT_PORT": str(settings.ps_port),
        "DMLC_NUM_SERVER": str(num_hosts),
        "DMLC_NUM_WORKER": str(num_hosts),
    }
    if interface:
        env["DMLC_INTERFACE"] = interface
    if settings.node_host:
        env["DMLC_NODE_HOST"] = settings.node_host
    return env


def set_process_environment(values: Mapping[str, str]) -> None:
    """Export `values` into this process's environment (ps-lite reads them with getenv when it starts)."""
    os.environ.update(values)


# MXNet engine settings for SyncBatchNorm over several CPU contexts (`syncbn` with SEGMAKER_CPU_DEVICES > 1).
# MXNet reads them once, when it loads: `segmaker train` exports them before importing it.
# SyncBatchNorm (src/operator/contrib/sync_batch_norm-inl.h) blocks each device's call in a barrier until
# every device's call for that layer has arrived, so no device's call may ever wait for another device's
# operators. Each GPU has its own temporary workspaces and random generators, but all CPU contexts share
# one pool of each (src/resource.cc, ResourceManagerImpl::Request), handed out round-robin, each copy an
# engine variable that orders every operator holding it: two devices' operators on one copy can wait for
# each other in a cycle through the barrier. Measured on the FCN (2 CPU contexts, MXNet 1.9.1): its 2
# Dropouts per device on 1 or 2 random copies (each device then draws the same copies) deadlock the first
# step -- gdb: one device's SyncBatchNorm forward in the barrier, every other worker idle -- on 4 copies it
# runs. A hybridized network gets its copies once, when its graph is set up, one device after the other; with
# as many copies as one pass (forward, or backward) of all devices requests, no copy is held by two devices
# (and training/epoch.py keeps imperative operators, which draw a copy at every call, from being queued
# between the devices' passes). Each CPU context has its own pool of engine workers
# (threaded_engine_perdevice.cc), and a call waiting in the barrier holds one: DeepLab can have 6
# SyncBatchNorms waiting at once on one device (5 ASPP branches and the auxiliary head), one more worker
# keeps that device's other operators running.
CPU_SYNCBN_WORKERS_PER_DEVICE = 8
CPU_SYNCBN_TEMP_COPIES_PER_DEVICE = 1024  # >= 2 x the forward operators of the largest network (382)
CPU_SYNCBN_RANDOM_COPIES_PER_DEVICE = 4  # >= the Dropout layers of any network (DeepLab: 3)


def mxnet_cpu_syncbn_environment(
    cpu_devices: int, environ: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """The MXNET_CPU_* settings SyncBatchNorm over `cpu_devices` CPU contexts needs (see above); a larger
    value already in the environment is kept."""
    env = os.environ if environ is None else environ
    needed = {
        "MXNET_CPU_WORKER_NTHREADS": CPU_SYNCBN_WORKERS_PER_DEVICE,
        "MXNET_CPU_TEMP_COPY": CPU_SYNCBN_TEMP_COPIES_PER_DEVICE * cpu_devices,
        "MXNET_CPU_PARALLEL_RAND_COPY": CPU_SYNCBN_RANDOM_COPIES_PER_DEVICE * cpu_devices,
    }
    return {key: str(max(value, _int_or_zero(env.get(key)))) for key, value in needed.items()}


def export_mxnet_cpu_syncbn_environment(cpu_devices: int) -> bool:
    """Export `mxnet_cpu_syncbn_environment` into this process if MXNet has not loaded yet; False if it
    has (the settings would have no effect, and training refuses syncbn on CPU contexts unless they were
    there from the start)."""
    if "mxnet" in sys.modules:
        return False
    set_process_environment(mxnet_cpu_syncbn_environment(cpu_devices))
    return True


def mxnet_cpu_syncbn_ready(cpu_devices: int, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether the environment holds the settings of `mxnet_cpu_syncbn_environment` (MXNet only uses them
    if they were there when it loaded, which `segmaker train` ensures)."""
    env = os.environ if environ is None else environ
    needed = mxnet_cpu_syncbn_environment(cpu_devices, {})
    return all(_int_or_zero(env.get(key)) >= int(value) for key, value in needed.items())


def _int_or_zero(raw: Optional[str]) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0


def checkpoint_dir(paths: Paths) -> Optional[Path]:
    """Where to write checkpoints: set when the job has a checkpoint config or the folder exists."""
    if paths.checkpoint_config_file.exists():
        raw = _read_json_object(paths.checkpoint_config_file, "checkpoint config")
        return Path(raw.get("LocalPath") or paths.checkpoints_dir)
    return paths.checkpoints_dir if paths.checkpoints_dir.is_dir() else None


def cpu_device_count(environ: Optional[Mapping[str, str]] = None) -> int:
    """`SEGMAKER_CPU_DEVICES=N`: split each batch over N CPU contexts as over N GPUs (default 1)."""
    env = os.environ if environ is None else environ
    raw = env.get("SEGMAKER_CPU_DEVICES", "1")
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"SEGMAKER_CPU_DEVICES must be a positive integer, not {raw!r}")
    return count


def int8_enabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """`SEGMAKER_QUANTIZE=off` skips the int8 model at the end of training (default `auto`: make it)."""
    env = os.environ if environ is None else environ
    raw = (env.get("SEGMAKER_QUANTIZE") or "auto").strip().lower()
    if raw not in ("auto", "off"):
        raise UserError(f"SEGMAKER_QUANTIZE must be auto or off, not {env.get('SEGMAKER_QUANTIZE')!r}")
    return raw == "auto"


def mxnet_home(environ: Optional[Mapping[str, str]] = None) -> Path:
    """Where baked-in pretrained weights live: `$MXNET_HOME/models` (MXNet's own default is ~/.mxnet)."""
    env = os.environ if environ is None else environ
    return Path(env.get("MXNET_HOME") or Path.home() / ".mxnet")


@dataclass(frozen=True)
class ServingSettings:
    """What SageMaker tells the model server through the environment."""

    port: int = 8080
    workers: Optional[int] = None
    timeout_seconds: int = 60
    max_payload_mb: float = 10.0  # the built-in's batch transform limit (sagemaker-python-sdk#1284)
    model_dir: Path = Path(DEFAULT_BASE_DIR) / "model"
    # Our additions: the largest image (in pixels) /invocations decodes, checked from the image header, and
    # the inference engine ("mxnet", "onnx", "onnx-int8", or None: on CPU ONNX Runtime on model.int8.onnx,
    # else on model.onnx, when present; else MXNet).
    max_pixels: int = 40_000_000
    engine: Optional[str] = None
    # Probabilities (C x H x W float32) go out as one RecordIO record, whose length field has 29 bits
    # (512 MiB, 134 M values): the default leaves room below that and bounds one answer to 480 MB.
    max_probability_values: int = 120_000_000

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)


SERVING_ENGINES = ("mxnet", "onnx", "onnx-int8")


def read_serving_settings(environ: Optional[Mapping[str, str]] = None) -> ServingSettings:
    env = os.environ if environ is None else environ
    paths = paths_from_env(env)
    workers = env.get("SAGEMAKER_MODEL_SERVER_WORKERS")
    return ServingSettings(
        port=_positive_int(env, "SAGEMAKER_BIND_TO_PORT", 8080),
        workers=_positive_int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", 1) if workers else None,
        timeout_seconds=_positive_int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
        max_payload_mb=_positive_float(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", ServingSettings.max_payload_mb),
        model_dir=Path(env.get("SEGMAKER_MODEL_DIR") or paths.model_dir),
        max_pixels=_positive_int(env, "SEGMAKER_MAX_PIXELS", 40_000_000),
        engine=_serving_engine(env),
        max_probability_values=_positive_int(env, "SEGMAKER_MAX_PROBABILITY_VALUES",
                                             ServingSettings.max_probability_values),
    )


def _serving_engine(env: Mapping[str, str]) -> Optional[str]:
    raw = (env.get("SEGMAKER_ENGINE") or "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in SERVING_ENGINES:
        allowed = ", ".join(SERVING_ENGINES)
        raise UserError(f"SEGMAKER_ENGINE must be one of auto, {allowed}, not {env.get('SEGMAKER_ENGINE')!r}")
    return raw


def _positive_int(env: Mapping[str, str], key: str, default: int) -> int:
    value = _positive_float(env, key, default)
    if value != int(value):
        raise UserError(f"{key} must be a whole number, not {env.get(key)!r}")
    return int(value)


def _positive_float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{key} must be a positive number, not {raw!r}")
    return value


def visible_gpu_devices(environ: Optional[Mapping[str, str]] = None, dev_dir: Path = Path("/dev")) -> int:
    """How many GPU devices are visible, found WITHOUT initialising CUDA: `CUDA_VISIBLE_DEVICES` when set,
    else the /dev/nvidiaN device files (what `docker run --gpus` exposes). Only a hint: whether MXNet can
    use them is `gpus.mxnet_gpu_count`'s answer (the CPU image on a GPU host sees devices it cannot use)."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e for e in visible.split(",") if e.strip() and not e.strip().startswith("-")]
        return len(entries)
    if not dev_dir.is_dir():
        return 0
    return sum(1 for p in dev_dir.glob("nvidia*") if p.name[len("nvidia"):].isdigit())

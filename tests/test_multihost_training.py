"""Two-host `segmaker train` jobs as local processes: 127.0.0.1 and 127.0.0.2 play algo-1 and algo-2, each
with its own /opt/ml tree and resourceconfig.json, as SageMaker lays them out."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import mxnet as mx
import numpy as np
import pytest

from segmaker.environment import Paths
from segmaker.outputs import read_metrics
from tests.docker_helpers import free_port
from tests.synthetic import write_opt_ml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HOSTS = ["127.0.0.1", "127.0.0.2"]
HYPERPARAMETERS = {
    "use_pretrained_model": "False",
    "crop_size": 32,
    "base_size": 48,
    "epochs": 1,
    "mini_batch_size": 4,
    "validation_mini_batch_size": 2,
    "data_workers": 1,
    "seed": 3,
    "learning_rate": 0.01,
}


def host_tree(base: Path, host: Optional[str], validation: int = 5, **hyperparameters) -> Paths:
    """A host's /opt/ml: the same data everywhere (a FullyReplicated channel); resourceconfig.json names
    the host among HOSTS (none for a one-host job)."""
    paths = write_opt_ml(
        base, train=8, validation=validation, hyperparameters=dict(HYPERPARAMETERS, **hyperparameters)
    )
    if host is not None:
        resources = {"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"}
        paths.resource_config_file.write_text(json.dumps(resources))
    return paths


STARTED: List[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """A failed test must not leave hosts waiting on each other (their nodes die with them)."""
    yield
    while STARTED:
        STARTED.pop().kill()


# `segmaker train` under a test harness (test only): without dropout, GluonCV's Dropout layers are the
# identity (one host draws its devices' dropout masks from one CPU generator in turn, each host from the
# start of its own, so with dropout two hosts cannot be bit-compared with one host's two devices); with
# SIGTERM_AT_BATCH, the process sends itself SIGTERM as it hands out that training batch (counted over the
# whole run), as SageMaker's stop would arrive then; with VALIDATION_DELAY, each validation batch is handed
# out that many seconds late (a validation as long as wanted, whatever the machine's speed).
HARNESS = """
import os, signal, sys, time
from mxnet.gluon import nn
from segmaker import cli
from segmaker.training import feed
if not {dropout}:
    nn.Dropout.hybrid_forward = lambda self, F, x: x
handed_out = [0]
original = feed.DataFeed.train_batches
def train_batches(self, *args):
    for batch in original(self, *args):
        handed_out[0] += 1
        if handed_out[0] == {sigterm_at_batch}:
            os.kill(os.getpid(), signal.SIGTERM)
        yield batch
feed.DataFeed.train_batches = train_batches
original_validation = feed.DataFeed.validation_batches
def validation_batches(self):
    for number, batch in enumerate(original_validation(self), 1):
        time.sleep({validation_delay})
        print("harness: validation batch", number, flush=True)
        yield batch
feed.DataFeed.validation_batches = validation_batches
sys.exit(cli.main(["train"]))
"""


def start(
    paths: Paths,
    host: Optional[str],
    ports: Dict[str, int],
    dropout: bool = True,
    sigterm_at_batch: int = 0,
    validation_delay: float = 0.0,
    **environ,
) -> subprocess.Popen:
    env = dict(
        os.environ,
        SAGEMAKER_BASE_DIR=str(paths.base),
        SEGMAKER_PS_PORT=str(ports["ps"]),
        SEGMAKER_STATUS_PORT=str(ports["status"]),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
        **environ,
    )
    if host is not None:
        env["SEGMAKER_NODE_HOST"] = host
    log = open(paths.base / "train.log", "ab")  # noqa: SIM115 - closed by the OS when the child ends
    if dropout and not sigterm_at_batch and not validation_delay:
        command = ["-m", "segmaker", "train"]
    else:
        harness = HARNESS.format(
            dropout=dropout, sigterm_at_batch=sigterm_at_batch, validation_delay=validation_delay
        )
        command = ["-c", harness]
    process = subprocess.Popen([sys.executable, *command], env=env, stdout=log, stderr=log)
    STARTED.append(process)
    return process


def log_of(paths: Paths) -> str:
    return (paths.base / "train.log").read_text(errors="replace")


def wait_all(processes: List[subprocess.Popen], timeout: float) -> List[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]


def trained_params_of(path: Path) -> np.ndarray:
    """Every parameter but BatchNorm's running statistics (they stay per device: not compared)."""
    loaded = mx.nd.load(str(path))
    names = sorted(name for name in loaded if "running_" not in name)
    return np.concatenate([loaded[name].asnumpy().ravel() for name in names])


@pytest.fixture
def ports() -> Dict[str, int]:
    return {"ps": free_port(), "status": free_port()}


def test_two_hosts_train_as_one_host_with_two_devices(tmp_path, ports):
    """Proves: a two-host job ends on both hosts with exit 0; only algo-1 prints metric lines and writes
    model/ and output/data; and it trains as ONE host splitting the same global batch over two devices
    (SEGMAKER_CPU_DEVICES=2: same slices, same per-device BatchNorm): the same final weights except
    BatchNorm's running statistics, which stay per device (1e-5: the loss's normalisers and the gradients
    summed over hosts instead of devices), and the same train loss (1e-5: each host reports its share of
    each global batch's loss, and the shares add up; the mean of the hosts' own means was 2-16 % off).
    Dropout is off in all three runs."""
    trees = [host_tree(tmp_path / host, host) for host in HOSTS]
    alone = host_tree(tmp_path / "alone", None)
    jobs = [start(paths, host, ports, dropout=False) for paths, host in zip(trees, HOSTS)]
    jobs.append(start(alone, None, ports, dropout=False, SEGMAKER_CPU_DEVICES="2"))
    codes = wait_all(jobs, timeout=900)
    assert codes == [0, 0, 0], [log_of(paths)[-3000:] for paths in trees + [alone]]

    main, other = trees
    assert (main.model_dir / "model_algo-1").is_file() and (main.output_data_dir / "metrics.json").is_file()
    assert not (other.model_dir / "model_algo-1").exists()
    assert not (other.output_data_dir / "metrics.json").exists()
    assert "validation mIOU" in log_of(main) and "#quality_metric" not in log_of(other)

    np.testing.assert_allclose(
        trained_params_of(main.model_dir / "model_algo-1"),
        trained_params_of(alone.model_dir / "model_algo-1"),
        atol=1e-5,
    )
    together, single = read_metrics(main.output_data_dir), read_metrics(alone.output_data_dir)
    assert [r.epoch for r in together] == [r.epoch for r in single] == [0]
    assert together[0].train_loss == pytest.approx(single[0].train_loss, rel=1e-5)


def test_two_hosts_stopped_and_resumed_end_as_one_host_uninterrupted(tmp_path, ports):
    """Proves: a SIGTERM to algo-2 alone (as the feed hands out the 4th batch, one ahead of training: the
    stop lands after iteration 3, inside epoch 1 of 2) stops both hosts at the same iteration, with a
    checkpoint from algo-1 only; restarted with algo-2's checkpoint folder empty, both hosts fail instead
    of training from different states, algo-2 saying it holds no checkpoint and algo-1 naming algo-2;
    with algo-1's checkpoints in both folders (as SageMaker's S3 sync leaves them) both resume and end with
    the weights and the per-epoch train loss of one host x 2 devices run without a stop (1e-5; BatchNorm's
    running statistics, and so the validation metrics, stay per device and are not compared)."""
    hyperparameters = dict(epochs=2)
    trees = [host_tree(tmp_path / host, host, **hyperparameters) for host in HOSTS]
    for paths in trees:
        paths.checkpoints_dir.mkdir()
    alone = host_tree(tmp_path / "alone", None, **hyperparameters)
    reference = start(alone, None, ports, dropout=False, SEGMAKER_CPU_DEVICES="2")
    stopped = [
        start(trees[0], HOSTS[0], ports, dropout=False),
        start(trees[1], HOSTS[1], ports, dropout=False, sigterm_at_batch=4),
    ]
    assert wait_all(stopped, timeout=900) == [143, 143], [log_of(paths)[-3000:] for paths in trees]
    saved = sorted(p.name for p in trees[0].checkpoints_dir.iterdir())
    assert saved[-1].endswith("-iter-000000003") and not any(trees[1].checkpoints_dir.iterdir())

    refused = [start(paths, host, ports, dropout=False) for paths, host in zip(trees, HOSTS)]
    assert wait_all(refused, timeout=600) == [1, 1], [log_of(paths)[-3000:] for paths in trees]
    assert "this host (127.0.0.2) holds no checkpoint" in trees[1].failure_file.read_text()
    assert "host 127.0.0.2 failed: the hosts do not resume" in trees[0].failure_file.read_text()

    for paths in trees:
        paths.failure_file.unlink()
    shutil.rmtree(trees[1].checkpoints_dir)
    shutil.copytree(trees[0].checkpoints_dir, trees[1].checkpoints_dir)
    resumed = [start(paths, host, ports, dropout=False) for paths, host in zip(trees, HOSTS)]
    assert wait_all(resumed + [reference], timeout=900) == [0, 0, 0], [
        log_of(paths)[-3000:] for paths in trees + [alone]
    ]
    assert "Resuming from checkpoint" in log_of(trees[1])
    np.testing.assert_allclose(
        trained_params_of(trees[0].model_dir / "model_algo-1"),
        trained_params_of(alone.model_dir / "model_algo-1"),
        atol=1e-5,
    )
    together, single = read_metrics(trees[0].output_data_dir), read_metrics(alone.output_data_dir)
    assert [r.epoch for r in together] == [r.epoch for r in single] == [0, 1]
    assert [r.train_loss for r in together] == pytest.approx([r.train_loss for r in single], rel=1e-5)


def test_a_host_with_unreadable_data_fails_the_job_on_every_host_with_its_reason(tmp_path, ports):
    """Proves: a data error on algo-2 ends algo-2 with its own reason (the file) and algo-1 within a
    minute with a failure file naming algo-2 and that reason; nobody waits at a barrier forever."""
    trees = [host_tree(tmp_path / host, host) for host in HOSTS]
    for image in trees[1].channel_dir("train").iterdir():
        image.write_bytes(b"not an image")  # algo-2's copy of the data is unreadable (algo-1's is fine)
    started = time.monotonic()
    codes = wait_all([start(paths, host, ports) for paths, host in zip(trees, HOSTS)], timeout=600)
    assert codes == [1, 1], [log_of(paths)[-3000:] for paths in trees]
    own = trees[1].failure_file.read_text()
    broken = next(p.name for p in trees[1].channel_dir("train").iterdir() if p.name in own)
    reason = trees[0].failure_file.read_text()
    assert "host 127.0.0.2 failed" in reason and broken in reason
    assert time.monotonic() - started < 600


def test_a_host_killed_mid_epoch_fails_the_others_naming_it(tmp_path, ports):
    """Proves: SIGKILL of algo-2's worker (its parameter-server server dies with it) makes algo-1 fail
    with a reason naming algo-2 within a minute of the kill, instead of hanging in a push."""
    trees = [host_tree(tmp_path / host, host, epochs=50) for host in HOSTS]
    jobs = [start(paths, host, ports) for paths, host in zip(trees, HOSTS)]
    _wait_for(lambda: "epoch 0 iteration 1/" in log_of(trees[1]), timeout=600)
    jobs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert jobs[0].wait(timeout=180) == 1
    assert time.monotonic() - killed < 90
    assert "host 127.0.0.2 stopped answering" in trees[0].failure_file.read_text()


def test_sigterm_to_every_host_stops_them_at_the_same_iteration(tmp_path, ports):
    """Proves: SIGTERM to both hosts (as SageMaker's stop sends it) ends both with 143 and no failure
    file, algo-1 having written the model directory, and both logs end at the same iteration."""
    trees = [host_tree(tmp_path / host, host, epochs=50) for host in HOSTS]
    jobs = [start(paths, host, ports) for paths, host in zip(trees, HOSTS)]
    _wait_for(lambda: all("epoch 0 iteration 1/" in log_of(paths) for paths in trees), timeout=600)
    _stop_every_host_within(jobs, trees, seconds=120)


def test_sigterm_during_a_long_validation_stops_every_host_within_the_budget(tmp_path, ports):
    """Proves: a SIGTERM to both hosts during validation ends it on both within one batch (they agree on
    the stop after each batch) instead of after each host's whole share: each host's share here would take
    ~150 s (50 one-image batches handed out 3 s late, whatever the machine's speed); both exit 143 within
    60 s of the signal, no failure file, algo-1 leaving its checkpoint and model directory."""
    trees = [
        host_tree(tmp_path / host, host, validation=100, validation_mini_batch_size=1)
        for host in HOSTS
    ]
    for paths in trees:
        paths.checkpoints_dir.mkdir()
    jobs = [start(paths, host, ports, validation_delay=3.0) for paths, host in zip(trees, HOSTS)]
    _wait_for(lambda: all("harness: validation batch 2" in log_of(paths) for paths in trees), timeout=600)
    _stop_every_host_within(jobs, trees, seconds=60)
    assert any(trees[0].checkpoints_dir.iterdir())
    validated = [log_of(paths).count("harness: validation batch") for paths in trees]
    assert max(validated) < 10, validated


def _stop_every_host_within(jobs: List[subprocess.Popen], trees: List[Paths], seconds: float) -> None:
    """SIGTERM to every host, as SageMaker's stop sends it: all exit 143 within `seconds`, without a failure
    file, algo-1 having written the model directory."""
    for job in jobs:
        job.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert wait_all(jobs, timeout=120) == [143, 143], [log_of(paths)[-3000:] for paths in trees]
    assert time.monotonic() - stopped < seconds
    assert not any(paths.failure_file.exists() for paths in trees)
    assert (trees[0].model_dir / "model_algo-1").is_file()


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)

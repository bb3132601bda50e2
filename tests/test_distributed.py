"""Multi-host training at the host level: segmaker's launcher starts MXNet's scheduler and servers as child
processes, two workers join on loopback addresses (127.0.0.1 and 127.0.0.2 play algo-1 and algo-2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from segmaker.environment import DistributedSettings, dmlc_environment
from segmaker.errors import UserError
from segmaker.training import distributed
from segmaker.training.devices import resolve_kvstore
from tests.docker_helpers import free_port

REPO = Path(__file__).resolve().parent.parent


def _worker(host: str, out_dir: Path, ps_port: int, status_port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        SEGMAKER_PS_PORT=str(ps_port),
        SEGMAKER_STATUS_PORT=str(status_port),
        # One engine thread: the step's kvstore operations leave in priority order (see step_worker).
        MXNET_CPU_WORKER_NTHREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
    )
    if host != "alone":
        env["SEGMAKER_NODE_HOST"] = host
    command = [sys.executable, "-m", "tests.multihost.step_worker", host, str(out_dir)]
    return subprocess.Popen(command, env=env, cwd=REPO)


@pytest.mark.slow
def test_two_workers_step_as_one_worker_on_the_same_global_batch(tmp_path):
    """Proves: the launcher's scheduler/servers/workers connect; update_on_kvstore=False steps over two
    hosts equal one host's steps on the same global batch (3 SGD+momentum steps, 2e-6); worker 2's
    different starting weights are replaced by worker 1's (broadcast_parameters); integer sums are exact
    beyond float32 (3e12); a broadcast reaches every host; a stop asked of one host ends the iteration on
    both at once; and every child process ends by itself (close() returns, nothing hangs).

    The workers run MXNet's engine on one thread with a long operation queued before each step, so the
    first step's kvstore init pulls and gradient push-pulls leave in priority order: without the wait in
    GlobalBatchTrainer._init_params, 4 runs in 5 ended with the hosts' weights apart (25 % of values, up to
    0.71; the race first seen under CPU load in session 2)."""
    ps_port, status_port = free_port(), free_port()
    workers = [_worker(host, tmp_path, ps_port, status_port) for host in ("127.0.0.1", "127.0.0.2", "alone")]
    try:
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        for worker in workers:
            worker.kill()  # a failed run must not leave a worker waiting (its nodes die with it)
    assert codes == [0, 0, 0]
    alone = [_flat(mx.nd.load(str(tmp_path / f"alone-{seed}.params"))) for seed in (7, 11)]
    first, second = (
        _flat(mx.nd.load(str(tmp_path / f"{host}.params"))) for host in ("127.0.0.1", "127.0.0.2")
    )
    np.testing.assert_array_equal(first, second)
    # Both hosts started from the first host's weights (seed 7), and stepped as one host does.
    np.testing.assert_allclose(first, alone[0], rtol=2e-6, atol=2e-6)
    assert np.abs(first - alone[1]).max() > 1e-3  # the other start would have been told apart
    for host in ("127.0.0.1", "127.0.0.2"):
        report = json.loads((tmp_path / f"{host}.json").read_text())
        assert report["sum"] == [6 * 10**12 + 1, 2 * (2**24 + 1), 10]
        assert report["seed"] == 1234567
        assert report["batches_after_stop"] == 0 and report["agreed_stop"] is True


def _flat(params) -> np.ndarray:
    return np.concatenate([params[name].asnumpy().ravel() for name in sorted(params)])


def test_host_names_resolve_with_backoff_then_fail_naming_the_host():
    answers = iter([OSError("not yet"), OSError("not yet"), "10.0.0.2"])
    slept, now = [], [0.0]

    def lookup(host):
        answer = next(answers) if host == "algo-2" else "10.0.0.1"
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    found = distributed.resolve_hosts(["algo-1", "algo-2"], 900, lookup, sleep, lambda: now[0])
    assert found == {"algo-1": "10.0.0.1", "algo-2": "10.0.0.2"}
    assert slept == [0.1, 0.2]

    def never(host):
        raise OSError("Name or service not known")

    with pytest.raises(UserError, match="host algo-2 could not be resolved within 60 s"):
        distributed.resolve_hosts(["algo-2"], 60, never, sleep, lambda: now[0])


def test_integers_travel_in_limbs_that_sum_exactly_in_float32():
    values = np.array([0, 1, 2**24 + 1, 3 * 10**12, 2**62 + 12345], dtype=np.int64)
    limbs = distributed._to_limbs(values, distributed.LIMB_BITS)
    assert limbs.max() < 2**distributed.LIMB_BITS
    summed = (limbs * 16).astype(np.float32)  # 16 hosts: every limb sum is still exact in float32
    assert (summed.astype(np.int64) == limbs * 16).all()
    np.testing.assert_array_equal(distributed._from_limbs(limbs, distributed.LIMB_BITS), values)


def test_the_environment_is_the_sagemaker_mxnet_toolkits():
    settings = DistributedSettings()
    env = dmlc_environment("server", "10.0.0.1", 2, settings, "eth0")
    assert env == {
        "DMLC_ROLE": "server",
        "DMLC_PS_ROOT_URI": "10.0.0.1",
        "DMLC_PS_ROOT_PORT": "8000",
        "DMLC_NUM_SERVER": "2",
        "DMLC_NUM_WORKER": "2",
        "DMLC_INTERFACE": "eth0",
    }


def test_kvstore_choice_by_host_count():
    cpus, gpus = [mx.cpu(0)], [mx.gpu(0), mx.gpu(1)]
    assert resolve_kvstore("auto", cpus, 2) == "dist_sync"
    assert resolve_kvstore("auto", gpus, 2) == "dist_device_sync"
    assert resolve_kvstore("auto", gpus, 1) == "device"
    assert resolve_kvstore("dist_sync", cpus, 3) == "dist_sync"
    with pytest.raises(UserError, match="kvstore dist_sync needs several hosts"):
        resolve_kvstore("dist_sync", cpus, 1)
    with pytest.raises(UserError, match="kvstore local reduces gradients within one host"):
        resolve_kvstore("local", cpus, 2)
    with pytest.raises(UserError, match="dist_async is not supported"):
        resolve_kvstore("dist_async", cpus, 2)


def test_each_host_slices_replicated_data_and_uses_its_s3_share_whole():
    from types import SimpleNamespace

    from segmaker.environment import ChannelConfig
    from segmaker.training.devices import WorkerRole
    from segmaker.training.loop import _data_order

    cluster = distributed.Cluster(WorkerRole(1, 2, "algo-2"))

    def job(distribution, batch=8):
        channels = {"train": ChannelConfig("train", s3_distribution_type=distribution)}
        return SimpleNamespace(config=SimpleNamespace(mini_batch_size=batch), channels=channels)

    replicated = _data_order(job("FullyReplicated"), cluster, 5)
    assert (replicated.batch_size, replicated.rank, replicated.world_size) == (8, 1, 2)
    assert replicated.local_batch(0, 0).positions == (4, 5, 6, 7)  # the second half of global batch 0
    sharded = _data_order(job("ShardedByS3Key"), cluster, 5)
    assert (sharded.batch_size, sharded.rank, sharded.world_size) == (4, 0, 1)  # its own files, half a batch
    with pytest.raises(UserError, match="mini_batch_size 9 is not a multiple of the 2 hosts"):
        _data_order(job("ShardedByS3Key", batch=9), cluster, 5)

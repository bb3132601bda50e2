"""MXNet's SyncBatchNorm over CPU contexts (README, "The training step": why syncbn stays off on CPU)."""

import pytest

from tests.fresh_process import run_check_script


@pytest.mark.parametrize("mode", ["imperative", "hybridized"])
def test_sync_batchnorm_is_exact_on_two_cpu_contexts_given_workers_and_workspaces(mode):
    """The README's claim that raising the engine's per-device CPU workers and the shared temporary
    workspaces makes MXNet's SyncBatchNorm exact over 2 CPU contexts on a small network: the gradients of
    every parameter match 1-device BatchNorm. Tolerance 1e-4 of the largest gradient per tensor: both
    compute the same sums of at most 128 float32 terms in another order (a few ulps, ~1e-6 relative,
    observed 1e-6); a BatchNorm that normalised each device's half on its own statistics differs by tens
    of percent. It fails too if the operator deadlocks (the 120 s timeout)."""
    engine = {"MXNET_CPU_WORKER_NTHREADS": "2", "MXNET_CPU_TEMP_COPY": "64"}
    report = run_check_script("syncbn_cpu_check.py", [mode], env=engine, timeout=120)
    assert (
        len(report) == 6
    )  # 2 convolutions (weights; no bias: BatchNorm follows), 2 BatchNorms (gamma, beta)
    for name, (difference, largest) in report.items():
        assert largest > 0, name
        assert difference <= 1e-4 * largest, (name, difference, largest)

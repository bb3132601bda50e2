"""`syncbn` over several CPU contexts (README, "The training step"): MXNet's SyncBatchNorm under the engine
settings of environment.mxnet_cpu_syncbn_environment, on a small network and on segmaker's FCN through the
real training step. Each check runs in a fresh process: MXNet reads those settings when it loads."""

import pytest

from segmaker import environment
from tests.fresh_process import CheckScript, run_check_script


@pytest.mark.parametrize("mode", ["imperative", "hybridized"])
def test_sync_batchnorm_is_exact_on_two_cpu_contexts_on_a_small_network(mode):
    """The gradients of every parameter of a conv + SyncBatchNorm network on 2 CPU contexts match 1-device
    BatchNorm. Tolerance 1e-4 of the largest gradient per tensor: both compute the same sums of at most 128
    float32 terms in another order (a few ulps, ~1e-6 relative, observed 1e-6); a BatchNorm that normalised
    each device's half on its own statistics differs by tens of percent. It fails too if the operator
    deadlocks (the 120 s timeout: with MXNet's default settings it does)."""
    engine = environment.mxnet_cpu_syncbn_environment(2, {})
    report = run_check_script("syncbn_cpu_check.py", [mode], env=engine, timeout=120)
    assert (
        len(report) == 6
    )  # 2 convolutions (weights; no bias: BatchNorm follows), 2 BatchNorms (gamma, beta)
    for name, (difference, largest) in report.items():
        assert largest > 0, name
        assert difference <= 1e-4 * largest, (name, difference, largest)


@pytest.mark.slow
def test_fcn_step_with_syncbn_on_two_cpu_devices_is_the_one_device_step():
    """One SGD step of the FCN (ResNet-50, random weights, crop 32, batch 4) through train_one_epoch,
    against the gradient of the same loss through the 1-device network in float64 (the independent
    reference: BatchNorm over the whole batch, computed exactly enough). Distances are relative L2 over all
    trained parameters. The 1-device float32 step is itself only this close to float64 (measured 2.0 %: the
    rounding error grows through 50 BatchNorm backward passes towards the stem convolutions), and the
    2-device syncbn step is as close (measured 1.9 %; 1.9 % from the 1-device step); per-device BatchNorm
    on 2 devices, what `syncbn` replaces, is 134 % away. Bound 5 %."""
    report = run_check_script("syncbn_fcn_check.py", ["compare"], timeout=300)
    assert report["one_device"] < 0.05, report
    assert report["syncbn_2_devices"] < 0.05, report
    assert report["syncbn_2_devices_from_one_device"] < 0.05, report
    assert report["batchnorm_per_device_2_devices"] > 0.5, report


@pytest.mark.parametrize("algorithm", ["fcn", "psp", "deeplab"])
def test_the_cpu_syncbn_settings_cover_the_largest_networks(algorithm):
    """environment.py's bounds on the ResNet-101 networks (auxiliary head, SyncBatchNorm): one device's
    forward pass requests at most one temporary workspace per operator, its backward pass at most two per
    forward operator (its backward operator and a gradient sum where an output is used twice), so twice
    the forward operators must fit the copies per device; every Dropout draws from its own random
    generator copy. Measured: fcn 360 operators and 2 Dropouts, psp 381 and 2, deeplab 382 and 3."""
    import contextlib
    import io
    import json

    import mxnet as mx

    from segmaker import models

    with contextlib.redirect_stdout(io.StringIO()):  # PSPNet prints its crop size
        net = models.ALGORITHMS[algorithm](
            3, backbone="resnet101", aux=True, pretrained_base=False, base_size=64, crop_size=64,
            norm_layer=mx.gluon.contrib.nn.SyncBatchNorm, norm_kwargs={"num_devices": 2},
        )
    nodes = json.loads(mx.sym.Group(list(net(mx.sym.var("data")))).tojson())["nodes"]
    operators = [node["op"] for node in nodes if node["op"] != "null"]
    assert operators.count("_contrib_SyncBatchNorm") > 100  # the network the job would build
    assert 2 * len(operators) <= environment.CPU_SYNCBN_TEMP_COPIES_PER_DEVICE
    assert operators.count("Dropout") <= environment.CPU_SYNCBN_RANDOM_COPIES_PER_DEVICE


@pytest.fixture(scope="module", autouse=True)
def _wrap_around_started(request):
    """The 30-step run below (this module's longest check), started before the module's first test when that
    test is selected: it keeps about one CPU core busy, so on two cores it runs while the tests above do."""
    if not any("wrap_around_run" in item.fixturenames for item in request.session.items
               if item.module is request.module):
        yield None
        return
    check = CheckScript("syncbn_fcn_check.py", ["steps", "30", "512"])
    try:
        yield check
    finally:
        check.stop()


@pytest.fixture(scope="module")
def wrap_around_run(_wrap_around_started) -> CheckScript:
    return _wrap_around_started


# Last in the module: its check ran while the tests above did.
@pytest.mark.slow
def test_syncbn_on_two_cpu_devices_survives_the_workspace_pool_wrapping_around(wrap_around_run):
    """30 steps of the 2-device syncbn FCN with Dropout on, MXNet's CPU temporary workspaces cut to 512 so
    that its round-robin hand-out passes over every copy within the run. The loss's operators are queued
    before either device's network backward (epoch._step); with one backward call for both, device 1's
    loss gradient was queued after device 0's network backward and this run deadlocked by step ~10
    (measured: no progress within 150 s). A deadlock fails the test through the timeout."""
    report = wrap_around_run.report(timeout=240)
    assert report["steps"] == 30

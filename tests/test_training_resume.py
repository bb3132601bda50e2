"""Exact resume and "validate what you save", through the real training loop on tiny synthetic data."""

import threading
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from segmaker import cli
from segmaker.environment import Paths
from segmaker.models import parameters_by_name
from segmaker.outputs import read_metrics
from segmaker.training import feed as feed_module
from segmaker.training import validation as validation_module
from tests.synthetic import write_opt_ml

pytestmark = pytest.mark.slow

DETERMINISTIC = {
    "use_pretrained_model": "False",
    "crop_size": 32,
    "base_size": 48,
    "mini_batch_size": 2,
    "validation_mini_batch_size": 2,
    "data_workers": 1,
    "seed": 11,
    "learning_rate": 0.01,
}


def train(monkeypatch, paths: Paths, stop_after: int = 0, cpu_devices: str = "1") -> bool:
    """`segmaker train` in this process; with `stop_after`, a stop request arrives as the stop_after-th
    iteration starts (as if SIGTERM came then). True when training ran to its end."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(paths.base))
    monkeypatch.setenv("SEGMAKER_CPU_DEVICES", cpu_devices)
    stop = threading.Event()
    if stop_after:
        original = feed_module.DataFeed.train_batches
        handed_out = [0]

        def train_batches(self, *args):
            for batch in original(self, *args):
                handed_out[0] += 1
                if handed_out[0] == stop_after:
                    stop.set()
                yield batch

        monkeypatch.setattr(feed_module.DataFeed, "train_batches", train_batches)
    completed = cli._train(paths, stop, threading.Event())
    monkeypatch.undo()
    return completed


def saved(path: Path) -> dict:
    return {name: value.asnumpy() for name, value in mx.nd.load(str(path)).items()}


def largest_difference(left: dict, right: dict) -> float:
    assert left.keys() == right.keys()
    return max(float(np.max(np.abs(left[name] - right[name]))) for name in left)


def test_a_run_stopped_twice_and_resumed_ends_as_the_uninterrupted_run(tmp_path, monkeypatch):
    """2 epochs of 4 iterations. Stopped after epoch 0's training, before its validation (the state a stop
    during validation leaves), then 2 iterations into epoch 1, and resumed each time: epoch 0 must be
    validated on resume, the resumed epoch must skip the 2 batches already trained (same permutation, same
    augmentation) and draw the same dropout masks. Measured: equal bit for bit on the CPU; before batches
    were skipped and MXNet re-seeded per step, the largest difference was 0.08."""
    hyperparameters = dict(DETERMINISTIC, epochs=2)
    uninterrupted = write_opt_ml(tmp_path / "a", train=8, validation=2, hyperparameters=hyperparameters)
    interrupted = write_opt_ml(tmp_path / "b", train=8, validation=2, hyperparameters=hyperparameters)
    interrupted.checkpoints_dir.mkdir()

    assert train(monkeypatch, uninterrupted)
    assert not train(monkeypatch, interrupted, stop_after=4)
    assert not train(monkeypatch, interrupted, stop_after=2)
    assert train(monkeypatch, interrupted)

    final = "model_algo-1"
    difference = largest_difference(
        saved(uninterrupted.model_dir / final), saved(interrupted.model_dir / final)
    )
    print(f"largest parameter difference, resumed vs uninterrupted: {difference:.3g}")
    assert difference == 0.0
    expected, resumed = (read_metrics(p.output_data_dir) for p in (uninterrupted, interrupted))
    assert [(r.epoch, r.mIOU) for r in resumed] == [(r.epoch, r.mIOU) for r in expected]
    # The resumed epoch's loss is summed in two parts: equal up to the order of float additions.
    assert [r.train_loss for r in resumed] == pytest.approx([r.train_loss for r in expected], rel=1e-12)


def test_validation_uses_exactly_the_weights_saved_as_model_best_on_two_devices(tmp_path, monkeypatch):
    """On 2 devices each BatchNorm keeps its own running statistics; save_parameters writes their average
    (MXNet's Parameter._reduce). The network that validates must hold exactly the saved values."""
    validated = []
    original = validation_module.Validator.evaluate

    def evaluate(self, *args, **kwargs):
        params = parameters_by_name(self._net)
        validated.append({name: [d.asnumpy() for d in p.list_data()] for name, p in params.items()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(validation_module.Validator, "evaluate", evaluate)
    hyperparameters = dict(DETERMINISTIC, epochs=1, mini_batch_size=4)
    paths = write_opt_ml(tmp_path, train=8, validation=2, hyperparameters=hyperparameters)
    assert train(monkeypatch, paths, cpu_devices="2")

    (weights,) = validated
    best = saved(paths.model_dir / "model_best.params")
    assert set(weights) <= set(best)
    running_means = [name for name in weights if name.endswith("running_mean")]
    assert running_means
    for name, copies in weights.items():
        for copy in copies:
            np.testing.assert_array_equal(copy, best[name], err_msg=name)

"""Run by tests/test_precision.py in its own process: float16's dynamic loss scaler state goes into a
checkpoint and comes back on resume. As in amp_scaling_check.py, AMP is initialised with empty operator
lists (the CPU has no float16 GEMM): nothing is cast, but the scaler, the trainer hooks and our step are the
GPU path's.

Usage: amp_checkpoint_check.py CHECKPOINT_DIR. Prints one JSON line.
"""

import json
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet.contrib import amp

from segmaker.outputs import History
from segmaker.training.checkpoints import STATE_FILE, Checkpointing, CheckpointStore, TrainingState
from segmaker.training.early_stopping import EarlyStoppingState
from tests.amp_scaling_check import fresh, step, weights
from tests.test_loss import batches

WINDOW = 3  # clean steps before the scale doubles (MXNet: 2000): a doubling falls after the checkpoint
HYPERPARAMETERS = {"num_classes": 3, "precision_dtype": "float16"}


def scaler_of(trainer) -> dict:
    scaler = trainer._amp_loss_scaler
    return {"loss_scale": scaler._loss_scale, "next_loss_scale": scaler._next_loss_scale,
            "unskipped": scaler._unskipped}


def float16_run():
    net, trainer = fresh("float16")
    trainer._amp_loss_scaler._scale_seq_len = WINDOW
    return net, trainer


def checkpointing(directory: Path, net, trainer) -> Checkpointing:
    store = CheckpointStore(directory, HYPERPARAMETERS)
    return Checkpointing(store, True, net, trainer, best_params=directory / "best.params")


def scaler_after_each_step(net, trainer, steps) -> list:
    after = []
    for batch in steps:
        step(net, trainer, batch)
        after.append(scaler_of(trainer))
    return after


def main(directory: Path):
    amp.init(target_dtype="float16", target_precision_ops=[], conditional_fp32_ops=[], fp32_ops=[])
    good = list(batches(6, seed=4))
    images, masks = good[1]
    poisoned = images.copy()
    poisoned[0, 0, 0, 0] = np.inf  # non-finite gradients: an overflow, the update skipped, the scale halved
    before, after = [good[0], (poisoned, masks), good[2]], good[3:]

    net, trainer = float16_run()
    report = {"before_checkpoint": scaler_after_each_step(net, trainer, before)}
    state = TrainingState(len(before), EarlyStoppingState(), History(), HYPERPARAMETERS)
    checkpointing(directory, net, trainer).save(state)
    report["uninterrupted"] = scaler_after_each_step(net, trainer, after)
    uninterrupted_weights = weights(net)

    net, trainer = float16_run()
    report["new_trainer"] = scaler_of(trainer)
    checkpoint = CheckpointStore(directory, HYPERPARAMETERS).latest()
    report["in_state_json"] = json.loads((checkpoint.directory / STATE_FILE).read_text())["loss_scaler"]
    checkpointing(directory, net, trainer).restore(checkpoint, [mx.cpu()])
    report["restored"] = scaler_of(trainer)
    report["resumed"] = scaler_after_each_step(net, trainer, after)
    report["resumed_weights_max_difference"] = max(
        float(np.abs(weights(net)[k] - v).max()) for k, v in uninterrupted_weights.items()
    )

    # A checkpoint written before the scaler state was kept: state.json without "loss_scaler".
    document = json.loads((checkpoint.directory / STATE_FILE).read_text())
    del document["loss_scaler"]
    (checkpoint.directory / STATE_FILE).write_text(json.dumps(document))
    net, trainer = float16_run()
    old = CheckpointStore(directory, HYPERPARAMETERS).latest()
    resumed_state = checkpointing(directory, net, trainer).restore(old, [mx.cpu()])
    report["old_checkpoint_iterations"] = resumed_state.completed_iterations
    report["restored_from_old_checkpoint"] = scaler_of(trainer)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

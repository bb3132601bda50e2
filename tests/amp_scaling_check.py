"""Run by tests/test_precision.py in its own process (amp.init patches MXNet's operators process-wide).

The float16 operators themselves cannot run on the CPU (MXNet 1.9.1: "FP16 gemm on cpu not implemented!"),
so AMP is initialised with empty operator lists: nothing is cast, but the dynamic loss scaling, trainer
hooks and our step (precision.scaled, make_trainer) are exactly the GPU path's. Prints one JSON line.
"""

import json
import sys
import threading

import mxnet as mx
import numpy as np
from mxnet.contrib import amp

from segmaker.config import parse_hyperparameters
from segmaker.training.epoch import EpochPlan, train_one_epoch
from segmaker.training.loss import SegmentationLoss
from segmaker.training.optimizer import make_trainer
from segmaker.training.schedule import LearningRateSchedule
from tests.test_loss import TwoHeads, batches


def weights(net):
    return {name[len(net.prefix) :]: p.data().asnumpy().copy() for name, p in net.collect_params().items()}


def fresh(precision):
    mx.random.seed(9)
    net = TwoHeads(3)
    net.initialize(mx.init.Normal(0.5))
    config = parse_hyperparameters(
        {"num_classes": 3, "precision_dtype": precision, "learning_rate": 0.1, "momentum": 0.9}
    )
    return net, make_trainer(net, config, "local")


def step(net, trainer, batch):
    loss = SegmentationLoss(3)
    schedule = LearningRateSchedule(0.1, "poly", total_iterations=10**6)
    plan = EpochPlan(0, 0, 1, 1)
    train_one_epoch(net, trainer, loss, [batch], [mx.cpu()], schedule, plan, threading.Event())
    mx.nd.waitall()


def main():
    good = list(batches(4, seed=1))
    reference, reference_trainer = fresh("float32")
    step(reference, reference_trainer, good[0])

    amp.init(target_dtype="float16", target_precision_ops=[], conditional_fp32_ops=[], fp32_ops=[])
    net, trainer = fresh("float16")
    scaler = trainer._amp_loss_scaler
    scaler._scale_seq_len = 2  # grow after 2 clean steps instead of 2000, to see it happen
    report = {"initial_scale": scaler.loss_scale, "update_on_kvstore_requested": trainer._kvstore_params}
    step(net, trainer, good[0])
    after_first = weights(net)
    report["first_step_max_difference_to_float32"] = max(
        float(np.abs(after_first[k] - v).max()) for k, v in weights(reference).items()
    )
    images, masks = good[1]
    poisoned = images.copy()
    poisoned[0, 0, 0, 0] = np.inf  # the gradients become non-finite: an overflow
    step(net, trainer, (poisoned, masks))
    report["overflow_step_changed_weights"] = any(
        bool((weights(net)[k] != v).any()) for k, v in after_first.items()
    )
    report["scale_after_overflow"] = scaler._next_loss_scale
    step(net, trainer, good[2])
    report["scale_used_after_overflow"] = scaler.loss_scale
    step(net, trainer, good[3])
    report["scale_after_two_clean_steps"] = scaler._next_loss_scale
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())

"""The epoch loop on a toy network: loss goes down, batches split over CPU devices, stop requests, labels."""

import threading

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from segmaker.training.epoch import EpochPlan, EpochStats, train_one_epoch
from segmaker.training.loss import SegmentationLoss
from segmaker.training.schedule import LearningRateSchedule


class PixelClassifier(gluon.HybridBlock):
    """A 1x1 convolution returning a 1-tuple, shaped like GluonCV's segmentation outputs."""

    def __init__(self, num_classes):
        super().__init__()
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(num_classes, 1, in_channels=3)

    def hybrid_forward(self, F, x):
        return (self.conv(x),)


def easy_batches(count, batch_size=4, size=8, seed=0):
    """Channel 0 bright = class 1, else class 0; a few ignored pixels."""
    rng = np.random.RandomState(seed)
    for _ in range(count):
        masks = (rng.rand(batch_size, size, size) > 0.5).astype(np.uint8)
        images = rng.randn(batch_size, 3, size, size).astype(np.float32)
        images[:, 0] += np.where(masks == 1, 2.0, -2.0)
        masks[:, 0, 0] = 255
        yield images, masks


def setup(contexts):
    mx.random.seed(0)
    net = PixelClassifier(2)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    loss = SegmentationLoss(2)
    return net, trainer, loss


@pytest.mark.parametrize("devices", [1, 2])
def test_loss_goes_down_on_one_or_two_cpu_contexts(devices):
    contexts = [mx.cpu(i) for i in range(devices)]
    net, trainer, loss = setup(contexts)
    schedule = LearningRateSchedule(0.5, "poly", total_iterations=40)
    first = train_one_epoch(
        net, trainer, loss, easy_batches(5), contexts, schedule, EpochPlan(0, 0, 5, 5), threading.Event()
    )
    rest = [
        train_one_epoch(
            net,
            trainer,
            loss,
            easy_batches(5, seed=e),
            contexts,
            schedule,
            EpochPlan(e, 5 * e, 5, 5),
            threading.Event(),
        )
        for e in range(1, 4)
    ]
    assert first.iterations == 5 and first.images == 20
    assert rest[-1].mean_loss < 0.7 * first.mean_loss
    assert rest[-1].last_lr == pytest.approx(schedule.at(19))
    assert trainer.learning_rate == pytest.approx(schedule.at(19))


def test_a_stop_request_ends_the_epoch_after_the_current_iteration():
    contexts = [mx.cpu()]
    net, trainer, loss = setup(contexts)
    stop = threading.Event()

    def batches_that_request_a_stop():
        for index, batch in enumerate(easy_batches(10)):
            if index == 2:
                stop.set()  # as the SIGTERM handler would, while iteration 3 is being prepared
            yield batch

    stats = train_one_epoch(
        net,
        trainer,
        loss,
        batches_that_request_a_stop(),
        contexts,
        LearningRateSchedule(0.1, "poly", total_iterations=10),
        EpochPlan(0, 0, 10, 10),
        stop,
    )
    assert stats.iterations == 3


def test_runs_at_most_the_planned_iterations():
    contexts = [mx.cpu()]
    net, trainer, loss = setup(contexts)
    stats = train_one_epoch(
        net,
        trainer,
        loss,
        easy_batches(10),
        contexts,
        LearningRateSchedule(0.1, "poly", total_iterations=10),
        EpochPlan(1, 7, 3, 10),
        threading.Event(),
    )
    assert stats.iterations == 3


def test_parts_of_an_epoch_add_up():
    total = EpochStats(2, 8, 3.0, 1.0, 0.1) + EpochStats(3, 12, 2.0, 2.0, 0.05)
    assert total == EpochStats(5, 20, 5.0, 3.0, 0.05)
    assert total.mean_loss == 1.0 and total.throughput == pytest.approx(20 / 3)

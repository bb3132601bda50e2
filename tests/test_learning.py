"""Short learning runs through the real step (train_one_epoch, our loss, a Gluon trainer) on small networks:
SGD at built-in-like settings learns, and class weights / Dice rescue a 97 %-background task."""

import threading

import mxnet as mx
import numpy as np
from mxnet import gluon

from segmaker.training.epoch import EpochPlan, train_one_epoch
from segmaker.training.loss import CROSS_ENTROPY, DICE, SegmentationLoss, median_frequency_weights
from segmaker.training.schedule import LearningRateSchedule

SIZE = 16


class SmallSegmenter(gluon.HybridBlock):
    """conv-BN-ReLU-conv, returning a 1-tuple like GluonCV's networks without the auxiliary head."""

    def __init__(self, num_classes, hidden=8):
        super().__init__()
        with self.name_scope():
            self.body = gluon.nn.HybridSequential()
            self.body.add(
                gluon.nn.Conv2D(hidden, 3, padding=1, in_channels=3),
                gluon.nn.BatchNorm(in_channels=hidden),
                gluon.nn.Activation("relu"),
                gluon.nn.Conv2D(num_classes, 1, in_channels=hidden),
            )

    def hybrid_forward(self, F, x):
        return (self.body(x),)


class PixelLogistic(gluon.HybridBlock):
    """A 1x1 convolution: per-pixel logistic regression, whose optimum is the Bayes decision."""

    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(2, 1, in_channels=3)

    def hybrid_forward(self, F, x):
        return (self.conv(x),)


def colour_task(rng, batch=4, num_classes=3):
    """Class c is a noisy colour: channel c is bright inside its blocks."""
    masks = rng.randint(0, num_classes, size=(batch, SIZE // 4, SIZE // 4)).repeat(4, 1).repeat(4, 2)
    images = 0.7 * rng.randn(batch, 3, SIZE, SIZE)
    for c in range(num_classes):
        images[:, c] += 1.5 * (masks == c)
    masks = masks.astype(np.uint8)
    masks[:, 0, :3] = 255
    return images.astype(np.float32), masks


def rare_foreground_task(rng, batch=8):
    """~97 % background: one 3x3 foreground square per 16x16 image (3.5 %); a foreground pixel's feature is
    N(1.5, 1), background N(0, 1). With these priors the Bayes decision (what plain cross entropy converges
    to) calls almost every pixel background; weighting the classes equally calls most foreground pixels
    foreground."""
    masks = np.zeros((batch, SIZE, SIZE), np.uint8)
    for n in range(batch):
        top, left = rng.randint(0, SIZE - 3, size=2)
        masks[n, top : top + 3, left : left + 3] = 1
    images = rng.randn(batch, 3, SIZE, SIZE).astype(np.float32)
    images[:, 0] += 1.5 * masks
    return images, masks


def train(net, loss, task, optimizer, optimizer_params, steps, seed=0):
    rng = np.random.RandomState(seed)
    trainer = gluon.Trainer(net.collect_params(), optimizer, optimizer_params)
    schedule = LearningRateSchedule(optimizer_params["learning_rate"], "poly", total_iterations=steps)
    batches = (task(rng) for _ in range(steps))
    plan = EpochPlan(0, 0, steps, steps)
    return train_one_epoch(net, trainer, loss, batches, [mx.cpu()], schedule, plan, threading.Event())


def predictions(net, images):
    return net(mx.nd.array(images))[0].asnumpy().argmax(axis=1)


def test_sgd_at_builtin_like_settings_learns():
    """SGD, momentum 0.9, learning rate 1e-2 with the poly schedule (the built-in's kind of settings):
    with our loss's scale (mean CE over valid pixels, step divided by the batch size) the loss falls and the
    pixels are classified far above chance (1/3)."""
    mx.random.seed(0)
    net = SmallSegmenter(3)
    net.initialize(mx.init.Xavier())
    sgd = {"learning_rate": 0.01, "momentum": 0.9}
    first = train(net, SegmentationLoss(3), colour_task, "sgd", sgd, 10)
    later = train(net, SegmentationLoss(3), colour_task, "sgd", sgd, 60, seed=1)
    images, masks = colour_task(np.random.RandomState(99), batch=8)
    valid = masks != 255
    accuracy = float((predictions(net, images) == masks)[valid].mean())
    print(f"SGD: mean loss {first.mean_loss:.3f} -> {later.mean_loss:.3f}, pixel accuracy {accuracy:.3f}")
    assert later.mean_loss < 0.7 * first.mean_loss
    assert accuracy > 0.85


def foreground_scores(loss):
    """(recall, IoU) of the foreground class after a short SGD run."""
    mx.random.seed(0)
    net = PixelLogistic()
    net.initialize(mx.init.Normal(0.01))
    train(net, loss, rare_foreground_task, "sgd", {"learning_rate": 0.1, "momentum": 0.9}, 150)
    images, masks = rare_foreground_task(np.random.RandomState(123), batch=32)
    predicted, truth = predictions(net, images) == 1, masks == 1
    return float(predicted[truth].mean()), float((predicted & truth).sum() / (predicted | truth).sum())


def test_class_weights_and_dice_find_the_rare_class_that_plain_cross_entropy_misses():
    """Plain cross entropy predicts background everywhere (its optimum here is the Bayes decision under
    a 3 % prior); balanced class weights (median frequency, counted as the job counts them) find most of
    the foreground, Dice (which optimises an F1-like score) a good part of it."""
    counts = np.zeros(2, np.int64)
    rng = np.random.RandomState(7)
    for _ in range(10):
        counts += np.bincount(rare_foreground_task(rng)[1].ravel(), minlength=2)
    assert counts[0] / counts.sum() > 0.96
    plain = foreground_scores(SegmentationLoss(2, CROSS_ENTROPY))
    weighted = foreground_scores(SegmentationLoss(2, CROSS_ENTROPY, median_frequency_weights(counts)))
    dice = foreground_scores(SegmentationLoss(2, DICE))
    print(f"foreground (recall, IoU): plain {plain}, balanced weights {weighted}, dice {dice}")
    assert plain[0] < 0.02
    assert weighted[0] > 0.6 and weighted[1] > 0.05  # many false positives: the price of weight ~32
    assert dice[0] > 0.1 and dice[1] > 0.1

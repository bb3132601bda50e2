"""One training epoch over the devices: split each batch, forward, loss, backward, step; progress lines."""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from segmaker.training.loss import SegmentationLoss, StepLoss
from segmaker.training.precision import scaled
from segmaker.training.schedule import LearningRateSchedule

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 30.0

Batch = Tuple[np.ndarray, np.ndarray]  # images N x 3 x H x W float32, masks N x H x W uint8 (255 = ignore)


@dataclass(frozen=True)
class EpochStats:
    """What an epoch (or the part of it one run did) measured; parts of one epoch add up with `+`."""

    iterations: int = 0
    images: int = 0
    loss_sum: float = 0.0  # this host's shares of each step's global-batch loss (StepLoss.read)
    seconds: float = 0.0
    last_lr: float = 0.0
    class_pixels: Tuple[int, ...] = ()  # training pixels per class (ignore not counted)

    def __post_init__(self):
        # A checkpoint's JSON gives a list back.
        object.__setattr__(self, "class_pixels", tuple(int(n) for n in self.class_pixels))

    def __add__(self, later: "EpochStats") -> "EpochStats":
        return EpochStats(
            self.iterations + later.iterations,
            self.images + later.images,
            self.loss_sum + later.loss_sum,
            self.seconds + later.seconds,
            later.last_lr if later.iterations else self.last_lr,
            _add_counts(self.class_pixels, later.class_pixels),
        )

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.iterations)

    @property
    def throughput(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _add_counts(first: Tuple[int, ...], second: Tuple[int, ...]) -> Tuple[int, ...]:
    if not first or not second:
        return tuple(first or second)
    return tuple(int(a) + int(b) for a, b in zip(first, second))


@dataclass(frozen=True)
class EpochPlan:
    """Which iterations of which epoch to run: a resumed epoch runs only the ones it still lacks."""

    epoch: int
    first_iteration: int
    iterations: int
    iterations_per_epoch: int


def train_one_epoch(
    net: gluon.Block,
    trainer: gluon.Trainer,
    loss_fn: SegmentationLoss,
    batches: Iterable[Batch],
    contexts: List[mx.Context],
    schedule: LearningRateSchedule,
    plan: EpochPlan,
    stop_requested: threading.Event,
) -> EpochStats:
    """Run `plan.iterations` steps (fewer if the data ends or a stop is requested: it is checked after
    every step, so a stop costs at most the iteration in progress)."""
    progress = _Progress(plan)
    pending: Optional[StepLoss] = None
    loss_sum, images, done, lr = 0.0, 0, 0, schedule.at(plan.first_iteration)
    class_pixels = np.zeros(loss_fn.num_classes, np.int64)
    for done, (batch_images, batch_masks) in enumerate(_limited(batches, plan.iterations), start=1):
        lr = schedule.at(plan.first_iteration + done - 1)
        trainer.set_learning_rate(lr)
        counts = loss_fn.class_counts(batch_masks)
        class_pixels += counts
        step_loss = _step(net, trainer, loss_fn, batch_images, batch_masks, counts, contexts)
        # Reading the previous step's loss here (not this one's) keeps the device one step ahead of Python.
        if pending is not None:
            loss_sum += progress.record(pending, images)
        pending, images = step_loss, images + len(batch_images)
        if stop_requested.is_set():
            break
    if pending is not None:
        loss_sum += progress.record(pending, images)
    mx.nd.waitall()
    return EpochStats(done, images, loss_sum, progress.elapsed(), lr, tuple(int(n) for n in class_pixels))


def _step(net, trainer, loss_fn: SegmentationLoss, batch_images, batch_masks, counts, contexts) -> StepLoss:
    """One update from one global batch: the loss normalises by the whole batch's valid pixels and
    trainer.step divides by its size, so the update does not depend on how the batch is split.
    Under float16 AMP the objectives are scaled before the backward (precision.scaled); the inputs and
    parameters stay float32 (AMP casts inside the operators).

    The backward runs in two calls: first the loss's, for every device, down to the network's outputs;
    then the network's, for every device. One call would queue device 1's loss gradient after device 0's
    network backward, and with SyncBatchNorm on CPU contexts an operator queued between the devices'
    passes can deadlock them (see environment.mxnet_cpu_syncbn_environment); the gradients are the same."""
    data = gluon.utils.split_and_load(batch_images, contexts, even_split=False)
    labels = gluon.utils.split_and_load(batch_masks.astype(np.float32), contexts, even_split=False)
    with autograd.record():
        outputs = [net(x) for x in data]
    used = [head for head, _ in loss_fn.heads(outputs[0])]
    detached = [_detached_heads(output, used) for output in outputs]
    with autograd.record():
        step_loss = loss_fn(detached, labels, counts)
        objectives = scaled(step_loss.objectives, trainer)
    autograd.backward(objectives)
    network_heads = [output[head] for output in outputs for head in used]
    autograd.backward(network_heads, head_grads=[output[head].grad for output in detached for head in used])
    trainer.step(len(batch_images))
    return step_loss


def _detached_heads(output, used: List[int]) -> Tuple[mx.nd.NDArray, ...]:
    """The network's outputs cut from its graph, those the loss uses collecting their gradient."""
    heads = tuple(head.detach() for head in output)
    for index in used:
        heads[index].attach_grad()
    return heads


def _limited(batches: Iterable[Batch], count: int) -> Iterator[Batch]:
    for index, batch in enumerate(batches):
        if index >= count:
            return
        yield batch


class _Progress:
    """Logs `iteration i/n, loss, images/s, ETA` every PROGRESS_EVERY_SECONDS (and for the first step)."""

    def __init__(self, plan: EpochPlan):
        self.plan = plan
        self.started = time.monotonic()
        self.last_logged: Optional[float] = None
        self.steps = 0
        self.window_loss = 0.0
        self.window_steps = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def record(self, step_loss: StepLoss, images_done: int) -> float:
        """Log this host's loss; return its share of the global batch's loss (what the epoch adds up)."""
        loss, share = step_loss.read()
        self.steps += 1
        self.window_loss += loss
        self.window_steps += 1
        now = time.monotonic()
        is_last = self.steps == self.plan.iterations
        if self.last_logged is None or is_last or now - self.last_logged >= PROGRESS_EVERY_SECONDS:
            self._log(images_done, now)
        return share

    def _log(self, images_done: int, now: float) -> None:
        elapsed = now - self.started
        rate = images_done / max(elapsed, 1e-9)
        remaining = (self.plan.iterations - self.steps) * elapsed / max(1, self.steps)
        position = self.plan.iterations_per_epoch - self.plan.iterations + self.steps
        log.info(
            "epoch %d iteration %d/%d: loss %.4f, %.2f images/s, ETA %s",
            self.plan.epoch,
            position,
            self.plan.iterations_per_epoch,
            self.window_loss / self.window_steps,
            rate,
            _duration(remaining),
        )
        self.last_logged, self.window_loss, self.window_steps = now, 0.0, 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"

"""segmaker's segmentation loss: cross entropy and/or soft Dice over the valid pixels of the GLOBAL batch.

Why our own (and not GluonCV's MixSoftmaxCrossEntropyLoss): GluonCV's loss is built on MXNet's
SoftmaxOutput, whose backward ignores the head gradient and divides each device's gradient by that
device's own count of valid pixels. So the step grew with the number of devices, and `aux_weight` only
changed the printed loss. Here every term is an ordinary differentiable expression.

The step (B = mini_batch_size, the batch over all devices; w_c = class weight, 1 by default;
P = valid (non-ignore, mask != 255) pixels of the global batch, y_p its class, q_p the softmax output):

    W          = sum_{p in P} w_{y_p}                                    (summed over devices and hosts)
    CE         = (1 / W) * sum_{p in P} w_{y_p} * -log q_p[y_p]
    Dice       = 1 - sum_c w_c * (2 I_c + eps) / (S_c + eps) / sum_c w_c,
                 I_c = sum_{p in P} q_p[c] [y_p = c],  S_c = sum_{p in P} q_p[c] + #{p in P: y_p = c}
    L_head     = CE | Dice | CE + Dice                                   (the `loss` hyperparameter)
    L          = L_main + aux_weight * L_aux
    update     = optimizer(grad(L) / B)                                  (trainer.step(B))

With one device and uniform weights this is exactly GluonCV's single-device update (the gradient of the
mean cross entropy over valid pixels, then trainer.step(batch_size) divides by B), so learning rates
tuned on the built-in on one GPU still fit, and it does not depend on how the batch is split.

How it runs on several devices (and, with a `GlobalSum` that reduces over hosts, on several hosts):
every device computes its share of the sums (the numerators); the statistics the normalisers need
(W from the class pixel counts, known on the host from the numpy masks; for Dice I_c and S_c, which need
the forward) are summed over devices and passed through `global_sum` ONCE per step; each device then
backpropagates a surrogate whose gradients, summed over devices, are the gradient of L:

    CE_d   = (1 / W) * sum_{p in P_d} w_{y_p} * -log q_p[y_p]
    Dice_d = -sum_c w_c * [2 I_c,d / (S_c + eps) - (2 I_c + eps) S_c,d / (S_c + eps)^2] / sum_c w_c

with W, I_c, S_c the global values held constant (d(2I+eps)/(S+eps) = 2 dI/(S+eps) - (2I+eps) dS/(S+eps)^2).
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from segmaker.transforms import IGNORE

CROSS_ENTROPY = "cross_entropy"
DICE = "dice"
CROSS_ENTROPY_AND_DICE = "cross_entropy+dice"
LOSSES = (CROSS_ENTROPY, DICE, CROSS_ENTROPY_AND_DICE)
DICE_EPSILON = 1.0  # smoothing: a class absent from the batch and never predicted scores Dice 1, not 0/0

# Sums statistics over hosts: a float64 vector in, the element-wise sum over every host out (same shape).
GlobalSum = Callable[[np.ndarray], np.ndarray]


def single_host_sum(values: np.ndarray) -> np.ndarray:
    """The `GlobalSum` of a one-host job: the host's sum is the global sum."""
    return values


@dataclass(frozen=True)
class StepLoss:
    """One step's loss: `objectives` (one scalar NDArray per device) are what to backpropagate; the
    reported values, of the main head, are read with `read()` (it waits for the device, so read it a step
    later to keep the device busy)."""

    objectives: List[mx.nd.NDArray]
    _main_ce_sums: List[mx.nd.NDArray]
    _main_dice: float
    _host_weight: float  # W over this host's valid pixels
    _global_weight: float  # W over the global batch's (every host's)
    _hosts: int

    def read(self) -> Tuple[float, float]:
        """(this host's L_main, this host's share of the global batch's L_main).

        This host's L_main is the mean (class-weighted) cross entropy over its own valid pixels, plus the
        Dice loss when configured (progress lines). The shares of all hosts add up to the global batch's
        L_main: Σ_hosts CE-sum_h / W + Dice / hosts (the Dice value is already global). On one host the
        two are the same number."""
        ce_sum = sum(float(total.asscalar()) for total in self._main_ce_sums)
        host_loss = ce_sum / self._host_weight + self._main_dice
        share = ce_sum / self._global_weight + self._main_dice / self._hosts
        return host_loss, share

    def value(self) -> float:
        """This host's L_main (see `read`)."""
        return self.read()[0]


class SegmentationLoss:
    """L as in the module docstring; one instance per training run.

    Call order per step: `counts = loss.class_counts(masks)` on the host (before or after the forward),
    then inside `autograd.record()`: `loss(outputs, labels, counts)` with each device's network outputs
    (a tuple: main logits, then the auxiliary logits when the network has that head) and its labels.
    """

    def __init__(
        self,
        num_classes: int,
        kind: str = CROSS_ENTROPY,
        class_weights: Optional[Sequence[float]] = None,
        aux_weight: float = 0.5,
        global_sum: GlobalSum = single_host_sum,
        hosts: int = 1,
    ):
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")
        self.num_classes = num_classes
        self.kind = kind
        weights = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
        if weights.shape != (num_classes,):
            raise ValueError(f"{len(weights)} class weights for {num_classes} classes")
        self.class_weights = weights
        self.aux_weight = float(aux_weight)
        self.global_sum = global_sum
        self.hosts = hosts  # how many hosts' shares `global_sum` adds up (for the reported loss)
        self._device_weights = {}  # context -> the class weights as a float32 NDArray there

    @property
    def uses_cross_entropy(self) -> bool:
        return self.kind in (CROSS_ENTROPY, CROSS_ENTROPY_AND_DICE)

    @property
    def uses_dice(self) -> bool:
        return self.kind in (DICE, CROSS_ENTROPY_AND_DICE)

    def class_counts(self, masks: np.ndarray) -> np.ndarray:
        """Pixels of each class in `masks` (uint8, 255 = ignore): int64 vector of num_classes."""
        counts = np.bincount(masks.ravel(), minlength=256)
        return counts[: self.num_classes].astype(np.int64)

    def heads(self, outputs: Tuple[mx.nd.NDArray, ...]) -> List[Tuple[int, float]]:
        """(index in the outputs, weight) of each head that takes part in L: the auxiliary head only with
        a positive aux_weight (at 0 it gets no gradient at all)."""
        chosen = [(0, 1.0)]
        if len(outputs) > 1 and self.aux_weight > 0:
            chosen.append((1, self.aux_weight))
        return chosen

    def __call__(
        self,
        outputs: Sequence[Tuple[mx.nd.NDArray, ...]],
        labels: Sequence[mx.nd.NDArray],
        counts: np.ndarray,
    ) -> StepLoss:
        """The per-device objectives for one global batch; call inside `autograd.record()`.

        `outputs[d]` is device d's network output (a tuple of N x C x H x W logits), `labels[d]` its
        N x H x W float32 class ids (255 = ignore), `counts` the class pixel counts of this host's batch.
        """
        heads = self.heads(outputs[0])
        prepared = [_DeviceLabels.of(label, self._weights_on(label.context)) for label in labels]
        ce_sums, dice_sums = {}, {}  # head -> one entry per device
        for head, _ in heads:
            logits = [out[head] for out in outputs]
            if self.uses_cross_entropy:
                ce_sums[head] = [_cross_entropy_sum(x, lab) for x, lab in zip(logits, prepared)]
            if self.uses_dice:
                dice_sums[head] = [_dice_sums(x, lab, self.num_classes) for x, lab in zip(logits, prepared)]
        stats = self._global_statistics(counts, dice_sums)
        objectives = []
        for device in range(len(outputs)):
            terms = [
                weight * self._head_term(device, head, ce_sums, dice_sums, stats) for head, weight in heads
            ]
            objectives.append(mx.nd.add_n(*terms) if len(terms) > 1 else terms[0])
        main_ce = [total.detach() for total in ce_sums.get(0, [])]
        main_dice = self._dice_value(*stats.dice[0]) if self.uses_dice else 0.0
        host_weight = float(np.dot(counts, self.class_weights))
        return StepLoss(
            objectives,
            main_ce,
            main_dice,
            host_weight if host_weight > 0 else 1.0,
            stats.normaliser,
            self.hosts,
        )

    def _head_term(self, device: int, head: int, ce_sums, dice_sums, stats: "_GlobalStatistics"):
        """CE_d and/or Dice_d of one head on one device (shape (1,))."""
        terms = []
        if self.uses_cross_entropy:
            terms.append(ce_sums[head][device] / stats.normaliser)
        if self.uses_dice:
            terms.append(self._dice_surrogate(dice_sums[head][device], stats.dice[head]))
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    # -- statistics --------------------------------------------------------------------------------------

    def _global_statistics(self, counts: np.ndarray, dice_sums) -> "_GlobalStatistics":
        """Sum the device statistics, then pass them through `global_sum` in one call (one round trip
        between hosts per step): the class pixel counts and, for Dice, each head's I_c and S_c."""
        pieces = [counts.astype(np.float64)]
        for head in sorted(dice_sums):
            for part in (0, 1):  # I_c, then the predicted part of S_c
                over_devices = sum(sums[part].detach().as_in_context(mx.cpu()) for sums in dice_sums[head])
                pieces.append(over_devices.asnumpy().astype(np.float64))
        summed = np.split(self.global_sum(np.concatenate(pieces)), len(pieces))
        global_counts = summed[0]
        dice = {}
        for index, head in enumerate(sorted(dice_sums)):
            intersection, predicted = summed[1 + 2 * index], summed[2 + 2 * index]
            dice[head] = (intersection, predicted + global_counts)
        return _GlobalStatistics(float(np.dot(global_counts, self.class_weights)), dice)

    def _dice_surrogate(self, device_sums, global_sums) -> mx.nd.NDArray:
        """Dice_d of the module docstring: summed over devices, its gradient is that of the global Dice.

        The device's true pixels in S_c,d are constants (no gradient), so only the predicted part enters."""
        device_intersection, device_predicted = device_sums
        intersection, total = global_sums
        ctx = device_intersection.context
        denominator = total + DICE_EPSILON
        normaliser = self.class_weights.sum()
        a = mx.nd.array(self.class_weights * 2.0 / denominator / normaliser, ctx=ctx)
        b = mx.nd.array(
            self.class_weights * (2.0 * intersection + DICE_EPSILON) / denominator**2 / normaliser, ctx=ctx
        )
        return -(mx.nd.sum(a * device_intersection) - mx.nd.sum(b * device_predicted)).reshape((1,))

    def _dice_value(self, intersection: np.ndarray, total: np.ndarray) -> float:
        scores = (2.0 * intersection + DICE_EPSILON) / (total + DICE_EPSILON)
        return float(1.0 - np.dot(self.class_weights, scores) / self.class_weights.sum())

    def _weights_on(self, ctx: mx.Context) -> mx.nd.NDArray:
        if ctx not in self._device_weights:
            self._device_weights[ctx] = mx.nd.array(self.class_weights, ctx=ctx, dtype="float32")
        return self._device_weights[ctx]


@dataclass(frozen=True)
class _GlobalStatistics:
    valid_weight: float  # W
    dice: dict  # head -> (I_c, S_c) over the global batch

    @property
    def normaliser(self) -> float:
        # A batch without a single valid pixel contributes no cross entropy (0 / 1, not 0 / 0).
        return self.valid_weight if self.valid_weight > 0 else 1.0


@dataclass(frozen=True)
class _DeviceLabels:
    """A device's labels ready for the loss: class index (ignore -> 0) and per-pixel weight (ignore -> 0)."""

    index: mx.nd.NDArray
    valid: mx.nd.NDArray
    pixel_weight: mx.nd.NDArray

    @classmethod
    def of(cls, labels: mx.nd.NDArray, class_weights: mx.nd.NDArray) -> "_DeviceLabels":
        valid = labels != IGNORE
        index = labels * valid
        return cls(index, valid, mx.nd.take(class_weights, index) * valid)


def _cross_entropy_sum(logits: mx.nd.NDArray, labels: _DeviceLabels) -> mx.nd.NDArray:
    """sum over the device's valid pixels of w_y * -log softmax(logits)[y] (float32, shape (1,))."""
    log_probabilities = mx.nd.log_softmax(logits.astype("float32"), axis=1)
    picked = mx.nd.pick(log_probabilities, labels.index, axis=1)
    return -mx.nd.sum(picked * labels.pixel_weight).reshape((1,))


def _dice_sums(logits: mx.nd.NDArray, labels: _DeviceLabels, num_classes: int):
    """(I_c,d, sum of q[c] over the device's valid pixels), each a float32 vector of num_classes."""
    probabilities = mx.nd.softmax(logits.astype("float32"), axis=1)
    one_hot = mx.nd.one_hot(labels.index, num_classes) * labels.valid.expand_dims(-1)  # N x H x W x C
    per_pixel = mx.nd.transpose(probabilities, axes=(0, 2, 3, 1))
    intersection = mx.nd.sum(per_pixel * one_hot, axis=(0, 1, 2))
    predicted = mx.nd.sum(per_pixel * labels.valid.expand_dims(-1), axis=(0, 1, 2))
    return intersection, predicted


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """`class_weights=balanced`: w_c = median(f) / f_c with f_c the share of class c among labelled
    pixels (Eigen & Fergus 2015), the median over the classes present; an absent class gets weight 0
    (it has no pixels to weigh, and its Dice term still pushes its predictions down)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        return np.zeros_like(counts)
    frequencies = counts / counts.sum()
    median = float(np.median(frequencies[present]))
    weights = np.zeros_like(counts)
    weights[present] = median / frequencies[present]
    return weights

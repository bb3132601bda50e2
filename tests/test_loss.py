"""The segmentation loss against numpy references: value, gradients, aux_weight, class weights, Dice,
and the same update on 1 or 2 devices."""

import threading

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from segmaker.training.epoch import EpochPlan, train_one_epoch
from segmaker.training.loss import (
    CROSS_ENTROPY,
    CROSS_ENTROPY_AND_DICE,
    DICE,
    DICE_EPSILON,
    SegmentationLoss,
    median_frequency_weights,
)
from segmaker.training.schedule import LearningRateSchedule

IGNORE = 255


class TwoHeads(gluon.HybridBlock):
    """Main and auxiliary 1x1-convolution heads on the input, shaped like GluonCV's (out, auxout)."""

    def __init__(self, num_classes, channels=3):
        super().__init__()
        with self.name_scope():
            self.main = gluon.nn.Conv2D(num_classes, 1, in_channels=channels, use_bias=False)
            self.auxlayer = gluon.nn.Conv2D(num_classes, 1, in_channels=channels, use_bias=False)

    def hybrid_forward(self, F, x):
        return self.main(x), self.auxlayer(x)


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def reference_cross_entropy(logits, masks, weights):
    """(loss, d loss / d logits) of the class-weighted mean CE over valid pixels, in float64."""
    logits = logits.astype(np.float64)
    num_classes = logits.shape[1]
    valid = masks != IGNORE
    index = np.where(valid, masks, 0)
    q = softmax(logits)
    one_hot = np.eye(num_classes)[index].transpose(0, 3, 1, 2)
    pixel_w = np.asarray(weights)[index] * valid
    total = pixel_w.sum()
    picked = np.take_along_axis(q, index[:, None], axis=1)[:, 0]
    loss = -(pixel_w * np.log(picked)).sum() / total
    grad = (q - one_hot) * pixel_w[:, None] / total
    return loss, grad


def reference_dice(logits, masks, weights):
    """(loss, d loss / d logits) of 1 - sum_c w_c (2 I_c + eps) / (S_c + eps) / sum w, by finite-free
    analytic differentiation in float64."""
    logits = logits.astype(np.float64)
    num_classes = logits.shape[1]
    valid = (masks != IGNORE)[:, None]
    index = np.where(masks != IGNORE, masks, 0)
    q = softmax(logits)
    one_hot = np.eye(num_classes)[index].transpose(0, 3, 1, 2) * valid
    axes = (0, 2, 3)
    intersection = (q * one_hot).sum(axis=axes)
    total = (q * valid).sum(axis=axes) + one_hot.sum(axis=axes)
    weights = np.asarray(weights, np.float64)
    scores = (2 * intersection + DICE_EPSILON) / (total + DICE_EPSILON)
    loss = 1 - (weights * scores).sum() / weights.sum()
    # d loss / d q[c] per pixel, then through the softmax Jacobian
    d_q = -(weights / weights.sum())[None, :, None, None] * (
        2 * one_hot / (total + DICE_EPSILON)[None, :, None, None]
        - ((2 * intersection + DICE_EPSILON) / (total + DICE_EPSILON) ** 2)[None, :, None, None] * valid
    )
    grad = q * (d_q - (d_q * q).sum(axis=1, keepdims=True))
    return loss, grad


def logits_gradient(loss, logits_list, masks_list, contexts):
    """Run `loss` on each device's logits; (reported value, objectives summed, gradient w.r.t. logits)."""
    arrays = [mx.nd.array(x, ctx=ctx) for x, ctx in zip(logits_list, contexts)]
    for array in arrays:
        array.attach_grad()
    labels = [mx.nd.array(m.astype(np.float32), ctx=ctx) for m, ctx in zip(masks_list, contexts)]
    counts = loss.class_counts(np.concatenate(masks_list))
    with autograd.record():
        step = loss([(a,) for a in arrays], labels, counts)
    autograd.backward(step.objectives)
    grads = np.concatenate([a.grad.asnumpy() for a in arrays])
    return step.value(), grads


def tiny_case(seed=0, num_classes=3, batch=2, size=4):
    rng = np.random.RandomState(seed)
    logits = rng.randn(batch, num_classes, size, size).astype(np.float32)
    masks = rng.randint(0, num_classes, size=(batch, size, size)).astype(np.uint8)
    masks[0, 0, :3] = IGNORE
    masks[1, 2] = IGNORE
    return logits, masks


def test_cross_entropy_by_hand_with_ignored_pixels():
    """Two pixels, two classes, one ignored: the loss is the valid pixel's CE alone (not halved)."""
    logits = np.array([[[[2.0, 5.0]], [[0.0, -1.0]]]], np.float32)  # 1 x 2 classes x 1 x 2 pixels
    masks = np.array([[[0, IGNORE]]], np.uint8)
    value, grad = logits_gradient(SegmentationLoss(2), [logits], [masks], [mx.cpu()])
    by_hand = np.log(1 + np.exp(-2.0))  # -log(e^2 / (e^2 + e^0))
    assert value == pytest.approx(by_hand, rel=1e-6)
    p0 = np.exp(2.0) / (np.exp(2.0) + 1)
    np.testing.assert_allclose(grad[0, :, 0, 0], [p0 - 1, 1 - p0], rtol=1e-5)
    assert not grad[0, :, 0, 1].any()  # the ignored pixel gets no gradient


@pytest.mark.parametrize("weights", [None, (1.0, 4.0, 0.5)])
def test_cross_entropy_and_class_weights_match_numpy(weights):
    logits, masks = tiny_case()
    loss = SegmentationLoss(3, CROSS_ENTROPY, class_weights=weights)
    value, grad = logits_gradient(loss, [logits], [masks], [mx.cpu()])
    ref_value, ref_grad = reference_cross_entropy(logits, masks, weights or (1, 1, 1))
    assert value == pytest.approx(ref_value, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weights", [None, (1.0, 4.0, 0.5)])
def test_dice_matches_numpy_on_one_and_two_devices(weights):
    """Dice over the global batch: the per-device surrogates' gradients add up to the global gradient."""
    logits, masks = tiny_case(seed=1)
    ref_value, ref_grad = reference_dice(logits, masks, weights or (1, 1, 1))
    for contexts in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        loss = SegmentationLoss(3, DICE, class_weights=weights)
        parts = len(contexts)
        value, grad = logits_gradient(
            loss, np.array_split(logits, parts), np.array_split(masks, parts), contexts
        )
        assert value == pytest.approx(ref_value, rel=1e-5)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_cross_entropy_plus_dice_is_the_sum():
    logits, masks = tiny_case(seed=2)
    value, grad = logits_gradient(SegmentationLoss(3, CROSS_ENTROPY_AND_DICE), [logits], [masks], [mx.cpu()])
    ce, ce_grad = reference_cross_entropy(logits, masks, (1, 1, 1))
    dice, dice_grad = reference_dice(logits, masks, (1, 1, 1))
    assert value == pytest.approx(ce + dice, rel=1e-5)
    np.testing.assert_allclose(grad, ce_grad + dice_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", [CROSS_ENTROPY, CROSS_ENTROPY_AND_DICE])
def test_two_hosts_shares_add_up_to_the_global_batch_loss(kind):
    """Two hosts, each with half of a global batch whose halves have different numbers of valid pixels:
    the hosts' reported shares add up to the global batch's loss (numpy reference), which the mean of the
    hosts' own losses misses. `global_sum` plays the parameter server: it adds both hosts' statistics,
    recorded in a first pass (a host's statistics do not depend on what the sum returns)."""
    logits, masks = tiny_case(seed=4, batch=4)
    masks[2:, :3] = IGNORE  # the second host's half has far fewer valid pixels
    halves = [slice(0, 2), slice(2, 4)]
    recorded = []
    for half in halves:
        record = SegmentationLoss(3, kind, global_sum=lambda v: recorded.append(v) or v, hosts=2)
        logits_gradient(record, [logits[half]], [masks[half]], [mx.cpu()])
    both = recorded[0] + recorded[1]
    host_losses, shares = [], []
    for half in halves:
        loss = SegmentationLoss(3, kind, global_sum=lambda v: both, hosts=2)
        arrays = [mx.nd.array(logits[half])]
        with autograd.record():
            step = loss(
                [(a,) for a in arrays],
                [mx.nd.array(masks[half].astype(np.float32))],
                loss.class_counts(masks[half]),
            )
        host_loss, share = step.read()
        host_losses.append(host_loss)
        shares.append(share)
    reference, _ = reference_cross_entropy(logits, masks, (1, 1, 1))
    if kind == CROSS_ENTROPY_AND_DICE:
        reference += reference_dice(logits, masks, (1, 1, 1))[0]
    assert sum(shares) == pytest.approx(reference, rel=1e-5)
    assert np.mean(host_losses) != pytest.approx(reference, rel=1e-2)


def test_cross_entropy_gradient_is_the_same_split_over_two_devices():
    """The halves hold different numbers of ignored pixels: a per-device normaliser would differ."""
    logits, masks = tiny_case(seed=3)
    masks[0] = IGNORE
    masks[0, 0, 0] = 1  # device 0: one valid pixel; device 1: most of its pixels
    one_value, one = logits_gradient(SegmentationLoss(3), [logits], [masks], [mx.cpu(0)])
    two_value, two = logits_gradient(
        SegmentationLoss(3), np.array_split(logits, 2), np.array_split(masks, 2), [mx.cpu(0), mx.cpu(1)]
    )
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-8)
    assert two_value == pytest.approx(one_value, rel=1e-6)


def aux_weight_gradients(aux_weight, x, masks):
    mx.random.seed(5)
    net = TwoHeads(3)
    net.initialize(mx.init.Normal(0.5))
    loss = SegmentationLoss(3, aux_weight=aux_weight)
    with autograd.record():
        outputs = net(mx.nd.array(x))
        step = loss([outputs], [mx.nd.array(masks.astype(np.float32))], loss.class_counts(masks))
    autograd.backward(step.objectives)
    main, aux = net(mx.nd.array(x))
    return net, main.asnumpy(), aux.asnumpy()


@pytest.mark.parametrize("aux_weight", [0.0, 0.4, 1.0])
def test_aux_weight_scales_the_auxiliary_gradient(aux_weight):
    """The aux head's weight gradient is aux_weight x the numpy CE gradient of its logits (so 0 gives 0),
    and the main head's is unaffected."""
    logits, masks = tiny_case(seed=4)
    x = np.random.RandomState(4).randn(2, 3, 4, 4).astype(np.float32)
    net, main_logits, aux_logits = aux_weight_gradients(aux_weight, x, masks)
    _, main_g = reference_cross_entropy(main_logits, masks, (1, 1, 1))
    _, aux_g = reference_cross_entropy(aux_logits, masks, (1, 1, 1))
    # d/dW of a 1x1 convolution: sum over pixels of dlogits[c] * x[k]
    expected_main = np.einsum("nchw,nkhw->ck", main_g, x)[:, :, None, None]
    expected_aux = aux_weight * np.einsum("nchw,nkhw->ck", aux_g, x)[:, :, None, None]
    np.testing.assert_allclose(net.main.weight.grad().asnumpy(), expected_main, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(net.auxlayer.weight.grad().asnumpy(), expected_aux, rtol=1e-4, atol=1e-7)


def test_aux_weight_zero_leaves_the_auxiliary_head_untouched():
    """With aux_weight=0 (network.freeze_auxiliary_head), an SGD step with momentum and weight decay
    does not change the auxiliary head; the main head moves."""
    from segmaker.training.network import freeze_auxiliary_head

    mx.random.seed(5)
    net = TwoHeads(3)
    net.initialize(mx.init.Normal(0.5))
    freeze_auxiliary_head(net)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5, "momentum": 0.9, "wd": 0.1})
    before_aux = net.auxlayer.weight.data().asnumpy().copy()
    before_main = net.main.weight.data().asnumpy().copy()
    run_steps(net, trainer, SegmentationLoss(3, aux_weight=0.0), [mx.cpu()], steps=2)
    np.testing.assert_array_equal(net.auxlayer.weight.data().asnumpy(), before_aux)
    assert np.abs(net.main.weight.data().asnumpy() - before_main).max() > 1e-3


def batches(count, seed=0, batch=4, size=6):
    rng = np.random.RandomState(seed)
    for _ in range(count):
        masks = rng.randint(0, 3, size=(batch, size, size)).astype(np.uint8)
        images = rng.randn(batch, 3, size, size).astype(np.float32) + masks[:, None]
        masks[0, :4] = IGNORE  # the first device's half has far fewer valid pixels
        masks[1, :, :5] = IGNORE
        yield images, masks


def run_steps(net, trainer, loss, contexts, steps):
    schedule = LearningRateSchedule(trainer.learning_rate, "poly", total_iterations=100)
    plan = EpochPlan(0, 0, steps, steps)
    return train_one_epoch(net, trainer, loss, batches(steps), contexts, schedule, plan, threading.Event())


def trained_weights(contexts, aux_weight=0.5):
    mx.random.seed(9)
    net = TwoHeads(3)
    net.initialize(mx.init.Normal(0.5), ctx=contexts)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4})
    stats = run_steps(net, trainer, SegmentationLoss(3, aux_weight=aux_weight), contexts, steps=3)
    params = net.collect_params().items()
    return {name[len(net.prefix) :]: p.data(contexts[0]).asnumpy() for name, p in params}, stats


def test_three_sgd_steps_on_one_or_two_devices_give_the_same_weights():
    """train_one_epoch end to end (split_and_load, loss, trainer.step): 1 vs 2 CPU devices agree to float32
    rounding (1e-5 relative: a different summation order only), while a per-device normaliser differs
    by tens of percent on these batches."""
    one, one_stats = trained_weights([mx.cpu(0)])
    two, two_stats = trained_weights([mx.cpu(0), mx.cpu(1)])
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert two_stats.mean_loss == pytest.approx(one_stats.mean_loss, rel=1e-5)


def test_median_frequency_weights():
    weights = median_frequency_weights(np.array([90, 10, 0, 30]))
    # frequencies of the present classes: 90/130, 10/130, 30/130 -> median 30/130
    np.testing.assert_allclose(weights, [30 / 90, 30 / 10, 0.0, 1.0])


def test_one_device_update_equals_gluoncvs_so_tuned_learning_rates_still_fit():
    """The scale the README promises: on one device (no aux head: GluonCV weighs it 1 whatever aux_weight
    says), SGD steps with our loss give the weights GluonCV's MixSoftmaxCrossEntropyLoss gives."""
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss

    def fresh():
        mx.random.seed(9)
        net = TwoHeads(3)
        net.initialize(mx.init.Normal(0.5))
        trainer = gluon.Trainer(net.main.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
        return net, trainer

    ours, ours_trainer = fresh()
    run_steps(ours, ours_trainer, SegmentationLoss(3, aux_weight=0.0), [mx.cpu()], steps=3)
    theirs, theirs_trainer = fresh()
    gluoncv_loss = MixSoftmaxCrossEntropyLoss(aux=False)
    schedule = LearningRateSchedule(0.1, "poly", total_iterations=100)  # as run_steps
    for iteration, (images, masks) in enumerate(batches(3)):
        theirs_trainer.set_learning_rate(schedule.at(iteration))
        labels = np.where(masks == IGNORE, -1, masks).astype(np.float32)
        with autograd.record():
            loss = gluoncv_loss(theirs(mx.nd.array(images))[0], mx.nd.array(labels))
        loss.backward()
        theirs_trainer.step(len(images))
    np.testing.assert_allclose(
        ours.main.weight.data().asnumpy(), theirs.main.weight.data().asnumpy(), rtol=1e-5, atol=1e-6
    )


def test_these_batches_expose_a_per_device_normaliser():
    """The invariance test above can fail: GluonCV's loss (each device normalised by its own valid pixels)
    moves the weights differently on 2 devices than on 1 on the same batches (more than 5 %)."""
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss

    def gluoncv_weights(contexts):
        mx.random.seed(9)
        net = TwoHeads(3)
        net.initialize(mx.init.Normal(0.5), ctx=contexts)
        trainer = gluon.Trainer(net.main.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
        loss = MixSoftmaxCrossEntropyLoss(aux=False)
        for images, masks in batches(3):
            labels = np.where(masks == IGNORE, -1, masks).astype(np.float32)
            split = gluon.utils.split_and_load
            parts = zip(split(images, contexts), split(labels, contexts))
            with autograd.record():
                losses = [loss(net(x)[0], y) for x, y in parts]
            autograd.backward(losses)
            trainer.step(len(images))
        return net.main.weight.data(contexts[0]).asnumpy()

    one, two = gluoncv_weights([mx.cpu(0)]), gluoncv_weights([mx.cpu(0), mx.cpu(1)])
    assert np.abs(two - one).max() / np.abs(one).max() > 0.05

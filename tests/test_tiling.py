"""Native-scale inference: sliding working-size tiles, blended logits, checked against hand-made references.

The "networks" here are forward functions whose logits are a known function of the input, so the right answer
for the whole image can be computed without any tiling.
"""

from typing import List

import mxnet as mx
import numpy as np
import pytest

from segmaker import models
from segmaker.models import SegmentationInference
from segmaker.transforms import normalize

SIZE = 32
# Per-pixel logits of three classes as a linear function of the normalised input channels.
MIX = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [-1.0, 0.5, 1.5]], np.float32)


def per_pixel(inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
    """A 'network' whose logits at a pixel depend on that pixel alone: tiling must not change them."""
    return [mx.nd.array(np.tensordot(MIX, x, axes=1)) for x in inputs]


def engine(forward, image_scale="native", size=SIZE) -> SegmentationInference:
    return SegmentationInference(None, size, [mx.cpu()], forward=forward, image_scale=image_scale)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference_probabilities(image: np.ndarray) -> np.ndarray:
    logits = np.tensordot(MIX, normalize(image), axes=1)
    exp = np.exp(logits - logits.max(axis=0))
    return exp / exp.sum(axis=0)


@pytest.mark.parametrize("height, width", [(100, 150), (33, 200), (32, 32), (20, 13), (257, 40)])
def test_tiles_put_every_pixel_where_it_belongs(height, width):
    image = smooth_image(height, width)
    expected = reference_probabilities(image)
    tiled = engine(per_pixel)
    np.testing.assert_allclose(tiled.predict_probabilities([image])[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tiled.predict_masks([image])[0], expected.argmax(axis=0))
    # The mirror image of a per-pixel function's input gives the mirrored logits: tta=flip changes nothing.
    np.testing.assert_allclose(tiled.predict_probabilities([image], flip=True)[0], expected,
                               rtol=1e-5, atol=1e-6)


def tile_constant(inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
    """A 'network' answering one value per tile (the mean of its first channel, padding excluded), for
    class 0, and 0 for class 1: stitched without blending, the answer would jump at every tile edge."""
    answers = []
    for x in inputs:
        rows = np.flatnonzero(np.abs(x).sum(axis=(0, 2)) > 0)
        columns = np.flatnonzero(np.abs(x).sum(axis=(0, 1)) > 0)
        value = x[0, : rows[-1] + 1, : columns[-1] + 1].mean()
        answers.append(mx.nd.array(np.stack([np.full(x.shape[1:], value), np.zeros(x.shape[1:])])))
    return answers


def full_canvas_blend(image: np.ndarray, size: int) -> np.ndarray:
    """The blended class-0 logits computed directly on a whole-image canvas (no bands), the reference for the
    band-by-band accumulation."""
    overlap = int(round(size * models.TILE_OVERLAP_FRACTION))
    height, width = image.shape[:2]
    window = models._blend_window(size, overlap)
    total, weight = np.zeros((height, width)), np.zeros((height, width))
    for y in models._tile_starts(height, size, size - overlap):
        for x in models._tile_starts(width, size, size - overlap):
            part = image[y: y + size, x: x + size]
            value = normalize(part)[0].mean()
            h, w = part.shape[:2]
            total[y: y + h, x: x + w] += value * window[:h, :w]
            weight[y: y + h, x: x + w] += window[:h, :w]
    return total / weight


def class0_logit(probabilities: np.ndarray) -> np.ndarray:
    # Two classes with logit 0 for class 1: p0 = sigmoid(l0), so l0 = log(p0 / p1).
    return np.log(probabilities[0] / probabilities[1])


def test_overlapping_tiles_blend_without_seams():
    height, width = 90, 140
    ramp = np.linspace(0, 255, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    image = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
    logits = class0_logit(engine(tile_constant).predict_probabilities([image])[0])
    np.testing.assert_allclose(logits, full_canvas_blend(image, SIZE), rtol=1e-4, atol=1e-4)
    # Neighbouring tiles' values differ by about (24 / 140) x 4.4 = 0.75; blended, no step between two
    # columns comes near that.
    steps = np.abs(np.diff(logits, axis=1)).max()
    jumps = np.abs(np.diff([normalize(image[:, x: x + SIZE])[0].mean() for x in (0, 24)]))[0]
    assert steps < jumps / 4, (steps, jumps)


def test_the_blend_window_is_positive_and_flat_inside():
    window = models._blend_window(32, 8)
    assert window.min() > 0 and window[8:24, 8:24].min() == 1.0
    assert models._tile_starts(100, 32, 24) == [0, 24, 48, 68]
    assert models._tile_starts(32, 32, 24) == [0] and models._tile_starts(5, 32, 24) == [0]


def test_scale_resamples_first_and_answers_at_the_input_size():
    image = smooth_image(60, 90)
    tiled = engine(per_pixel)
    assert tiled.processing_shape((60, 90), 0.5) == (30, 45)
    half = tiled.predict_masks([image], scale=0.5)[0]
    assert half.shape == (60, 90)
    probabilities = tiled.predict_probabilities([image], scale=2.0)[0]
    assert probabilities.shape == (3, 60, 90)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, rtol=1e-5)
    # base_size: the long side becomes working size x scale, tiled when that exceeds the working size.
    whole = engine(per_pixel, "base_size")
    assert whole.processing_shape((60, 90), 1.0) == (21, 32)
    assert whole.processing_shape((60, 90), 3.0) == (64, 96)
    assert whole.predict_masks([image], scale=3.0)[0].shape == (60, 90)


def mirror_sensitive(inputs: List[np.ndarray]) -> List[mx.nd.NDArray]:
    """Class 0's logit grows from left to right within the input (class 1: 0): its mirror image's
    logits, mirrored back, grow from right to left, and the average is flat."""
    ramp = np.linspace(-1, 1, SIZE, dtype=np.float32)[np.newaxis, :]
    return [mx.nd.array(np.stack([np.broadcast_to(ramp, x.shape[1:]), np.zeros(x.shape[1:])]))
            for x in inputs]


def test_flip_averages_the_image_and_its_mirror():
    image = smooth_image(SIZE, SIZE)
    plain = class0_logit(engine(mirror_sensitive).predict_probabilities([image])[0])
    flipped = class0_logit(engine(mirror_sensitive).predict_probabilities([image], flip=True)[0])
    assert plain[0, -1] - plain[0, 0] > 1.9
    np.testing.assert_allclose(flipped, 0.0, atol=1e-5)


def test_probabilities_resized_class_group_by_class_group_are_the_same(monkeypatch):
    """base_size: the softmax over classes is taken from groups of classes resized in two passes."""
    image = smooth_image(45, 77)
    whole = engine(per_pixel, "base_size").predict_probabilities([image])[0]
    monkeypatch.setattr(models, "MAX_RESIZED_VALUES", 45 * 77)  # one class per group
    np.testing.assert_allclose(engine(per_pixel, "base_size").predict_probabilities([image])[0], whole,
                               rtol=1e-5, atol=1e-7)

import numpy as np
import pytest
from PIL import Image

from segmaker.transforms import (
    IGNORE,
    MEAN,
    STD,
    normalize,
    pad_to,
    random_flip,
    random_scaled_crop,
    train_transform,
)
from tests.synthetic import CLASS_COLOURS, make_sample, random_size

COLOURS = np.array(CLASS_COLOURS[:3], dtype=np.int32)


def synthetic(seed: int, num_classes: int = 3):
    rng = np.random.default_rng(seed)
    return make_sample(rng, *random_size(rng), num_classes)


def colour_agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of non-ignore mask pixels whose image colour is closest to their class's colour."""
    distances = ((image[:, :, None, :].astype(np.int32) - COLOURS[None, None]) ** 2).sum(axis=-1)
    keep = mask != IGNORE
    return float((distances.argmin(axis=-1)[keep] == mask[keep]).mean())


def test_training_augmentation_keeps_image_and_mask_aligned():
    transform = train_transform(base_size=64, crop_size=48)
    augmented = [transform.augment(*synthetic(seed), np.random.default_rng(seed)) for seed in range(20)]
    # Bilinear resampling blends colours only along shape borders; a misaligned mask fails by far.
    assert min(colour_agreement(image, mask) for image, mask in augmented) > 0.98
    shifted = np.mean([colour_agreement(image, np.roll(mask, 3, axis=0)) for image, mask in augmented])
    assert shifted < 0.97  # the check above has teeth


def test_flip_moves_image_and_mask_together():
    image, mask = synthetic(1)
    flips = [random_flip(image, mask, np.random.default_rng(seed)) for seed in range(8)]
    assert any(np.array_equal(m, mask[:, ::-1]) for _, m in flips) and any(m is mask for _, m in flips)
    for flipped_image, flipped_mask in flips:
        expected = image[:, ::-1] if flipped_mask is not mask else image
        assert np.array_equal(flipped_image, expected)


def test_rescale_puts_the_long_side_in_half_to_twice_base_size():
    image, mask = synthetic(2)  # no ignore pixels: what is not padding is the rescaled image
    for seed in range(20):
        # A crop larger than any rescaled image holds all of it, padded bottom/right with ignore.
        _, cropped = random_scaled_crop(image, mask, np.random.default_rng(seed), base_size=40, crop_size=96)
        rows, cols = np.nonzero(cropped != IGNORE)
        scaled_height, scaled_width = rows.max() + 1, cols.max() + 1
        assert 20 <= max(scaled_height, scaled_width) <= 80
        assert (cropped[:scaled_height, :scaled_width] != IGNORE).all()
        aspect = (scaled_height / scaled_width) / (mask.shape[0] / mask.shape[1])
        assert aspect == pytest.approx(1.0, rel=0.1)
        assert set(np.unique(cropped)) <= set(np.unique(mask)) | {IGNORE}  # nearest: no blended class ids


def test_scaled_crop_equals_rescaling_everything_then_cropping():
    image, mask = synthetic(9)
    rng = np.random.default_rng(3)
    cropped_image, cropped_mask = random_scaled_crop(image, mask, rng, base_size=128, crop_size=40)
    rng = np.random.default_rng(3)  # replay the same draws on the slow path
    long_side = int(128 * rng.uniform(0.5, 2.0) + 0.5)
    factor = long_side / max(mask.shape)
    size = (int(mask.shape[1] * factor + 0.5), int(mask.shape[0] * factor + 0.5))
    full_mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    full_image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    top, left = int(rng.integers(0, size[1] - 40 + 1)), int(rng.integers(0, size[0] - 40 + 1))
    assert (cropped_mask == full_mask[top : top + 40, left : left + 40]).mean() > 0.99
    difference = np.abs(cropped_image.astype(int) - full_image[top : top + 40, left : left + 40])
    assert difference.mean() < 2.0


def test_pad_fills_mask_with_ignore_and_image_with_the_mean_colour():
    image, mask = synthetic(3)
    padded_image, padded_mask = pad_to(image, mask, 128)
    height, width = mask.shape
    assert padded_mask.shape == (128, 128) and padded_image.shape == (128, 128, 3)
    assert np.array_equal(padded_mask[:height, :width], mask) and np.array_equal(
        padded_image[:height, :width], image
    )
    assert (padded_mask[height:] == IGNORE).all() and (padded_mask[:, width:] == IGNORE).all()
    assert np.abs(normalize(padded_image)[:, -1, -1]).max() < 0.02  # the padding normalises to ~0


def test_crops_are_square_even_from_small_images():
    image, mask = synthetic(4)
    for seed in range(10):
        cropped_image, cropped_mask = random_scaled_crop(image, mask, np.random.default_rng(seed), 24, 64)
        assert cropped_image.shape == (64, 64, 3) and cropped_mask.shape == (64, 64)
        assert (cropped_mask == IGNORE).any()  # 24 x 2 < 64: always padded


def test_train_transform_outputs_normalised_float_chw_and_uint8_masks():
    transform = train_transform(base_size=64, crop_size=40)
    image, mask = transform(*synthetic(5), np.random.default_rng(0))
    assert image.shape == (3, 40, 40) and image.dtype == np.float32 and image.flags.c_contiguous
    assert mask.shape == (40, 40) and mask.dtype == np.uint8 and mask.flags.c_contiguous
    assert set(np.unique(mask)) <= {0, 1, 2, IGNORE}


def test_same_generator_seed_same_result_and_different_seeds_differ():
    transform = train_transform(base_size=64, crop_size=32)
    sample = synthetic(6)
    first = transform(*sample, np.random.default_rng(7))
    again = transform(*sample, np.random.default_rng(7))
    other = transform(*sample, np.random.default_rng(8))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_normalize_uses_imagenet_mean_and_std():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 128
    out = normalize(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    expected = [(1.0 - MEAN[0]) / STD[0], (0.0 - MEAN[1]) / STD[1], (128 / 255 - MEAN[2]) / STD[2]]
    assert out[:, 1, 2] == pytest.approx(expected, abs=1e-5)


def _stripe_widths(image_scale: str, draws: int = 40) -> list:
    """Widths (in crop pixels) of a 10-pixel-wide vertical stripe in crops of a 1200 x 1200 image."""
    from segmaker.transforms import random_scaled_crop

    mask = np.zeros((1200, 1200), np.uint8)
    for left in range(0, 1200, 60):
        mask[:, left: left + 10] = 1
    image = np.zeros((1200, 1200, 3), np.uint8)
    rng = np.random.default_rng(0)
    widths = []
    for _ in range(draws):
        _, crop = random_scaled_crop(image, mask, rng, base_size=120, crop_size=96, image_scale=image_scale)
        row = (crop[40] == 1).astype(int)
        starts, ends = np.flatnonzero(np.diff(row) == 1), np.flatnonzero(np.diff(row) == -1)
        widths += [end - start for start, end in zip(starts, ends) if end > start]
    return widths


def test_native_scale_keeps_objects_at_about_their_own_size():
    native = _stripe_widths("native")
    assert native and 8 <= min(native) and max(native) <= 13  # 10 px x [0.8, 1.25]
    # base_size 120 shrinks the 1200-pixel image about 10 x (x U(0.5, 2)): the stripe is 0 to 2 pixels.
    assert max(_stripe_widths("base_size") or [0]) <= 3


def test_native_scale_factors_are_log_uniform_around_one():
    from segmaker.transforms import NATIVE_SCALE_RANGE, scale_factor

    rng = np.random.default_rng(1)
    factors = np.array([scale_factor(500, 700, rng, 520, "native") for _ in range(4000)])
    assert NATIVE_SCALE_RANGE[0] <= factors.min() and factors.max() <= NATIVE_SCALE_RANGE[1]
    assert abs(np.median(factors) - 1.0) < 0.02 and abs(np.log(factors).mean()) < 0.01

"""Joint (image, mask) transforms: numpy and PIL only, so they run in data worker processes.

Every random transform draws its randomness once from the `numpy.random.Generator` it is given and applies the
same geometry to image and mask: bilinear for the image, nearest for the mask (a class id is never blended),
padding with 255 (ignore) for the mask. Images are HxWx3 uint8 RGB and masks HxW uint8 until `normalize`.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image

# The mask value that counts in neither loss nor metrics; the one definition the package shares.
IGNORE = 255

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALE_RANGE = (0.5, 2.0)
# image_scale=native: the image is used at its own resolution, resampled by a factor drawn log-uniformly from
# this range (so 0.8 and 1.25 are equally likely, median 1): objects keep about the size they have when the
# model serves (tiles at scale 1), with enough jitter to generalise across small changes of resolution.
NATIVE_SCALE_RANGE = (0.8, 1.25)
# The image is padded with the mean colour, which `normalize` turns into 0: padding then carries no signal.
MEAN_RGB = tuple(int(round(255 * m)) for m in MEAN)

_NORM_SCALE = (1.0 / (255.0 * np.array(STD, dtype=np.float32))).reshape(3, 1, 1)
_NORM_OFFSET = (np.array(MEAN, dtype=np.float32) / np.array(STD, dtype=np.float32)).reshape(3, 1, 1)

Pair = Tuple[np.ndarray, np.ndarray]


def random_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Mirror left-right with probability 1/2."""
    if rng.random() < 0.5:
        return image[:, ::-1], mask[:, ::-1]
    return image, mask


def pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> Pair:
    """Pad bottom and right to at least size x size: the image with the mean colour, the mask with ignore."""
    height, width = mask.shape
    pad_height, pad_width = max(0, size - height), max(0, size - width)
    if not pad_height and not pad_width:
        return image, mask
    padded_image = np.empty((height + pad_height, width + pad_width, 3), dtype=np.uint8)
    padded_image[...] = MEAN_RGB
    padded_image[:height, :width] = image
    padded_mask = np.full((height + pad_height, width + pad_width), IGNORE, dtype=np.uint8)
    padded_mask[:height, :width] = mask
    return padded_image, padded_mask


def scale_factor(height: int, width: int, rng: np.random.Generator, base_size: int,
                 image_scale: str = "base_size") -> float:
    """How much to resample an image for training: its long side to base_size x U(0.5, 2.0) (the built-in's
    augmentation), or for `native` a factor around 1 (NATIVE_SCALE_RANGE, log-uniform)."""
    if image_scale == "native":
        low, high = NATIVE_SCALE_RANGE
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return int(base_size * rng.uniform(*SCALE_RANGE) + 0.5) / max(height, width)


def random_scaled_crop(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, base_size: int, crop_size: int,
    image_scale: str = "base_size",
) -> Pair:
    """Rescale by `scale_factor` (base_size: the long side to base_size x U(0.5, 2.0)), pad to crop_size,
    take a random crop_size square.

    Same result as rescaling the whole image, padding and cropping, but only the crop's source region is
    resampled (PIL's `box`): at base_size 520 the rescaled image is up to 1040 px while the crop is 240.
    """
    height, width = mask.shape
    factor = scale_factor(height, width, rng, base_size, image_scale)
    scaled_height, scaled_width = max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
    # The crop window in rescaled coordinates, on the canvas padded (bottom/right) to at least crop_size.
    top = int(rng.integers(0, max(scaled_height, crop_size) - crop_size + 1))
    left = int(rng.integers(0, max(scaled_width, crop_size) - crop_size + 1))
    inside_height = min(crop_size, scaled_height - top)
    inside_width = min(crop_size, scaled_width - left)
    scale_y, scale_x = scaled_height / height, scaled_width / width
    box = (left / scale_x, top / scale_y, (left + inside_width) / scale_x, (top + inside_height) / scale_y)
    size = (inside_width, inside_height)
    cropped_image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, box=box))
    cropped_mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST, box=box))
    return pad_to(cropped_image, cropped_mask, crop_size)


def normalize(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32 with ImageNet mean/std (on 0..1 values)."""
    # Copy to CHW first so the result is C-contiguous (batches stack and pickle without another copy).
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw *= _NORM_SCALE
    chw -= _NORM_OFFSET
    return chw


@dataclass(frozen=True)
class TrainTransform:
    """The training augmentation of the built-in: flip, rescale, pad, crop, then normalise the image.

    Picklable (a plain frozen dataclass) so it can be sent to worker processes.
    """

    base_size: int
    crop_size: int
    image_scale: str = "base_size"

    def augment(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        """The geometric part only: uint8 image and mask of crop_size x crop_size (useful to inspect)."""
        image, mask = random_flip(image, mask, rng)
        return random_scaled_crop(image, mask, rng, self.base_size, self.crop_size, self.image_scale)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        """(3xCxC float32 normalised image, CxC uint8 mask with 255 = ignore)."""
        image, mask = self.augment(image, mask, rng)
        return normalize(image), np.ascontiguousarray(mask)


def train_transform(base_size: int, crop_size: int, image_scale: str = "base_size") -> TrainTransform:
    """The training preset (`base_size`, `crop_size`, `image_scale` as in the hyperparameters)."""
    return TrainTransform(base_size=base_size, crop_size=crop_size, image_scale=image_scale)

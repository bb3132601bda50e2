"""Decode encoded images and masks into numpy arrays (PIL only: runs in worker processes, never mxnet).

EXIF orientation is deliberately NOT applied: the built-in algorithm does not apply it either, and masks carry
no EXIF, so rotating the image alone would misalign it with its mask.
"""

import io
from typing import Tuple

import numpy as np
from PIL import Image

from segmaker.data.labelmaps import LabelMap
from segmaker.data.samples import EncodedSample
from segmaker.errors import DataError

# Masks whose pixels are the value itself (L) or a palette index (P: the index, not the colour, is the label).
_INDEX_MODES = ("L", "P", "1")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L")  # 16/32-bit greyscale: accepted when values fit in 0..255


def _open(data: bytes, name: str) -> Image.Image:
    if not data:
        raise DataError(f"{name}: the file is empty")
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: too many pixels to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # PIL reports unknown formats and truncated files as OSError/ValueError/SyntaxError.
        raise DataError(f"{name}: cannot decode the image ({exc})") from None
    return picture


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> HxWx3 uint8 RGB; DataError naming `name` when undecodable."""
    picture = _open(data, name)
    if picture.mode != "RGB":
        picture = picture.convert("RGB")
    return np.asarray(picture, dtype=np.uint8)


def decode_mask(data: bytes, name: str, label_map: LabelMap) -> np.ndarray:
    """Encoded PNG mask -> HxW uint8 class ids (255 = ignore) through `label_map`."""
    return label_map.to_class_ids(_mask_pixels(_open(data, name), name, label_map), name)


def _mask_pixels(picture: Image.Image, name: str, label_map: LabelMap) -> np.ndarray:
    if label_map.is_palette:
        # Colour-coded masks: whatever the PNG mode, the colour is the label.
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)
    if picture.mode in _INDEX_MODES:
        return np.asarray(picture if picture.mode != "1" else picture.convert("L"), dtype=np.uint8)
    if picture.mode in _WIDE_MODES:
        return _narrow(np.asarray(picture), name)
    # RGB, RGBA, LA, ...: the label map raises the "needs a palette map" DataError naming the file.
    return np.asarray(picture)


def _narrow(pixels: np.ndarray, name: str) -> np.ndarray:
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(
            f"{name}: a 16-bit mask with values up to {int(pixels.max())}; mask values must be in 0..255"
        )
    return pixels.astype(np.uint8)


def decode_sample(sample: EncodedSample, label_map: LabelMap) -> Tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 image, HxW uint8 class ids); DataError when the two sizes differ."""
    image = decode_image(sample.image, sample.name)
    mask = decode_mask(sample.mask, sample.mask_label, label_map)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{sample.mask_label}: mask is {_size(mask)} but its image {sample.name} is {_size(image)} "
            "(width x height); they must match"
        )
    return image, mask


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"

"""Decode encoded images and masks into numpy arrays (PIL only: runs in worker processes, never mxnet).

One rule for every image, in training and serving alike (`rgb_pixels`):

- EXIF orientation is applied, so the array is the picture as a browser or a phone shows it: a mask drawn
  over a phone photo in a browser lines up with it. A mask file carrying an orientation tag is turned the
  same way (masks written by tools carry none, and then nothing changes).
- 16- and 32-bit greyscale (PIL modes I;16*, I, F) is read on the 16-bit scale: 8-bit value =
  round(v * 255 / 65535), values outside 0..65535 clipped. A 16-bit PNG thus looks as it does in a viewer
  (older Pillow opens such a PNG as mode I with the same values, so both give the same pixels).
- Every other mode (L, P, 1, LA, RGBA, CMYK, YCbCr, ...) goes through PIL's conversion to RGB; an alpha
  channel is dropped (the colours as stored).
- A failure anywhere in decoding or conversion is an `ImageDecodeError` (a DataError in training, a 400 in
  serving), never a bare exception.
"""

import io
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps

from segmaker.data.labelmaps import LabelMap
from segmaker.data.samples import EncodedSample
from segmaker.errors import DataError

# Masks whose pixels are the value itself (L) or a palette index (P: the index, not the colour, is the label).
_INDEX_MODES = ("L", "P", "1")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # greyscale wider than 8 bits
_WIDE_MAX = 65535
_ORIENTATION_TAG = 0x0112
# What PIL raises on broken or unsupported data (besides its DecompressionBombError, a subclass of Exception).
PIL_ERRORS = (OSError, ValueError, SyntaxError, TypeError, IndexError, KeyError, EOFError)


class ImageDecodeError(Exception):
    """The bytes are not an image this rule can turn into pixels; the message says why."""


def oriented(picture: Image.Image) -> Image.Image:
    """`picture` turned as its EXIF orientation tag says (the same picture when it has none)."""
    try:
        # Checked first: exif_transpose copies the whole picture even when there is nothing to turn.
        if picture.getexif().get(_ORIENTATION_TAG, 1) in (1, None):
            return picture
        turned = ImageOps.exif_transpose(picture)
    except PIL_ERRORS as exc:
        raise ImageDecodeError(f"its EXIF orientation cannot be read ({exc})") from None
    return picture if turned is None else turned


def wide_grey_to_8_bits(pixels: np.ndarray) -> np.ndarray:
    """16/32-bit grey values -> uint8 on the 16-bit scale: round(v * 255 / 65535), v clipped to 0..65535."""
    # float32 is exact enough: v / 257 is never within 0.002 of a rounding tie for integer v.
    clipped = np.clip(np.asarray(pixels, dtype=np.float32), 0, _WIDE_MAX)
    return np.rint(clipped * (255.0 / _WIDE_MAX)).astype(np.uint8)


def rgb_pixels(picture: Image.Image) -> np.ndarray:
    """A loaded PIL image -> H x W x 3 uint8 RGB by the module's one rule (orientation, wide grey, modes)."""
    picture = oriented(picture)
    try:
        if picture.mode in _WIDE_MODES:
            grey = wide_grey_to_8_bits(np.asarray(picture))
            return np.repeat(grey[:, :, np.newaxis], 3, axis=2)
        if picture.mode != "RGB":
            picture = picture.convert("RGB")
        return np.asarray(picture, dtype=np.uint8)
    except PIL_ERRORS as exc:
        raise ImageDecodeError(f"its {picture.mode} pixels cannot be converted to RGB ({exc})") from None


def _open(data: bytes, name: str) -> Image.Image:
    if not data:
        raise DataError(f"{name}: the file is empty")
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: too many pixels to decode safely ({exc})") from None
    except PIL_ERRORS as exc:
        # PIL reports unknown formats and truncated files as OSError/ValueError/SyntaxError.
        raise DataError(f"{name}: cannot decode the image ({exc})") from None
    return picture


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> HxWx3 uint8 RGB; DataError naming `name` when undecodable."""
    try:
        return rgb_pixels(_open(data, name))
    except ImageDecodeError as exc:
        raise DataError(f"{name}: {exc}") from None


def decode_mask(data: bytes, name: str, label_map: LabelMap) -> np.ndarray:
    """Encoded PNG mask -> HxW uint8 class ids (255 = ignore) through `label_map`."""
    try:
        picture = oriented(_open(data, name))
    except ImageDecodeError as exc:
        raise DataError(f"{name}: {exc}") from None
    try:
        pixels = _mask_pixels(picture, name, label_map)
    except PIL_ERRORS as exc:
        raise DataError(f"{name}: its {picture.mode} pixels cannot be read as a mask ({exc})") from None
    return label_map.to_class_ids(pixels, name)


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

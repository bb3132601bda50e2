import io

import numpy as np
import pytest
from PIL import Image

from segmaker.data.decode import decode_image, decode_mask, decode_sample
from segmaker.data.labelmaps import load_label_map, parse_label_map
from segmaker.data.samples import EncodedSample
from segmaker.errors import DataError
from tests.synthetic import encode_image, encode_mask, palette_label_map

MASK = np.array([[0, 1, 2, 255], [2, 2, 1, 0], [0, 0, 0, 0]], dtype=np.uint8)  # 3 high, 4 wide


def png(array: np.ndarray) -> bytes:
    """PNG of the mode PIL picks for the array (uint16 2-D: I;16, uint8 HxWx4: RGBA, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_decode_to_rgb_uint8_of_height_by_width():
    image = np.zeros((3, 4, 3), dtype=np.uint8)
    image[..., 0] = 200
    for data in (encode_image(image, "JPEG"), encode_image(image, "PNG")):
        decoded = decode_image(data, "a.jpg")
        assert decoded.shape == (3, 4, 3) and decoded.dtype == np.uint8
        assert abs(int(decoded[0, 0, 0]) - 200) <= 3


def test_grey_and_rgba_images_become_rgb():
    assert decode_image(png(np.full((3, 4), 9, dtype=np.uint8)), "g.png").shape == (3, 4, 3)
    assert decode_image(png(np.zeros((3, 4, 4), dtype=np.uint8)), "a.png").shape == (3, 4, 3)


@pytest.mark.parametrize("data", [b"", b"not an image", encode_image(np.zeros((8, 8, 3), np.uint8))[:40]])
def test_undecodable_bytes_name_the_file(data):
    with pytest.raises(DataError, match="broken.jpg"):
        decode_image(data, "broken.jpg")


@pytest.mark.parametrize("mode", ["L", "P"])
def test_grey_and_palette_masks_keep_their_values(mode):
    assert Image.open(io.BytesIO(encode_mask(MASK, mode))).mode == mode
    # A P-mode mask's label is the palette index, not the colour it shows.
    decoded = decode_mask(encode_mask(MASK, mode), "m.png", load_label_map(None, 3))
    assert decoded.tolist() == MASK.tolist()


def test_rgb_masks_need_a_palette_map():
    with pytest.raises(DataError, match="m.png: mask has 3 channels"):
        decode_mask(encode_mask(MASK, "RGB"), "m.png", load_label_map(None, 3))


def test_rgb_masks_decode_through_a_palette_map():
    label_map = parse_label_map(palette_label_map(3), 3)
    assert decode_mask(encode_mask(MASK, "RGB"), "m.png", label_map).tolist() == MASK.tolist()


def test_16_bit_masks_are_accepted_only_within_0_255():
    assert (
        decode_mask(png(MASK.astype(np.uint16)), "w.png", load_label_map(None, 3)).tolist() == MASK.tolist()
    )
    with pytest.raises(DataError, match="w.png: a 16-bit mask with values up to 300"):
        decode_mask(png(np.full((2, 2), 300, dtype=np.uint16)), "w.png", load_label_map(None, 3))


def test_decode_sample_checks_sizes_and_names_both():
    image = encode_image(np.zeros((4, 3, 3), dtype=np.uint8))  # 3 wide, 4 high: the mask is 4 wide, 3 high
    sample = EncodedSample("img/a.jpg", image, encode_mask(MASK), mask_name="ann/a.png")
    with pytest.raises(DataError, match=r"ann/a\.png: mask is 4x3 but its image img/a\.jpg is 3x4"):
        decode_sample(sample, load_label_map(None, 3))


def test_decode_sample_returns_aligned_arrays():
    sample = EncodedSample("a.jpg", encode_image(np.zeros((3, 4, 3), dtype=np.uint8)), encode_mask(MASK))
    image, mask = decode_sample(sample, load_label_map(None, 3))
    assert image.shape == (3, 4, 3) and mask.tolist() == MASK.tolist()


def test_bad_mask_bytes_name_the_mask():
    sample = EncodedSample(
        "a.jpg", encode_image(np.zeros((3, 4, 3), dtype=np.uint8)), b"junk", mask_name="a.png"
    )
    with pytest.raises(DataError, match="a.png: cannot decode"):
        decode_sample(sample, load_label_map(None, 3))

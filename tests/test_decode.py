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


# --------------------------------------------------------------- one rule for every picture (rgb_pixels)

# How each EXIF orientation turns the stored pixels into the picture as shown (EXIF 2.3, tag 0x0112),
# written out with numpy independently of PIL's ImageOps.
SHOWN_FROM_STORED = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    4: lambda s: s[::-1, :],
    5: lambda s: s.transpose(1, 0, 2),
    6: lambda s: np.rot90(s, -1),  # stored lying on its left side: turn clockwise
    7: lambda s: np.rot90(s, 2).transpose(1, 0, 2),
    8: lambda s: np.rot90(s, 1),
}
INVERSE = {6: 8, 8: 6}


def with_orientation(stored: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    picture = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_picture_as_shown(orientation):
    shown = np.random.default_rng(orientation).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    stored = np.ascontiguousarray(SHOWN_FROM_STORED[INVERSE.get(orientation, orientation)](shown))
    assert np.array_equal(SHOWN_FROM_STORED[orientation](stored), shown)  # the table's own consistency
    assert decode_image(with_orientation(stored, orientation), "phone.png").tolist() == shown.tolist()


def test_a_phone_photo_lines_up_with_the_mask_drawn_over_it_in_a_browser():
    # The camera stores a 40 wide x 24 high sensor image with orientation 6 (shown 24 wide x 40 high);
    # the mask was drawn over the picture as shown: class 1 in its top 10 rows.
    shown = np.zeros((40, 24, 3), np.uint8)
    shown[:10] = 250
    mask = np.zeros((40, 24), np.uint8)
    mask[:10] = 1
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # orientation 6 turns it back clockwise
    sample = EncodedSample("phone.jpg", with_orientation(stored, 6, "JPEG"), encode_mask(mask))
    image, decoded_mask = decode_sample(sample, load_label_map(None, 2))
    assert image.shape == (40, 24, 3) and decoded_mask.tolist() == mask.tolist()
    assert image[:10].mean() > 240 and image[10:].mean() < 15


def test_16_bit_grey_uses_the_16_bit_scale():
    values = np.array([[0, 257, 1000, 65535]], dtype=np.uint16)
    decoded = decode_image(png(values), "g16.png")
    # round(v * 255 / 65535): 0, 1, 3.89 -> 4, 255, the same in all three channels.
    assert decoded[..., 0].tolist() == [[0, 1, 4, 255]]
    assert (decoded == decoded[..., :1]).all()


def test_32_bit_grey_uses_the_same_rule_clipped():
    values = np.array([[-5, 32768, 65535, 70000]], dtype=np.int32)
    buffer = io.BytesIO()
    Image.fromarray(values, "I").save(buffer, format="TIFF")  # older Pillow opens 16-bit PNGs as mode I too
    assert decode_image(buffer.getvalue(), "g32.tif")[..., 0].tolist() == [[0, 128, 255, 255]]


def test_cmyk_la_palette_and_bilevel_become_rgb():
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    buffer = io.BytesIO()
    cyan.save(buffer, format="JPEG", quality=95)
    pixel = decode_image(buffer.getvalue(), "cmyk.jpg")[4, 4].astype(int)
    assert pixel[0] < 20 and pixel[1] > 235 and pixel[2] > 235
    grey_alpha = Image.new("LA", (3, 2), (100, 7))
    assert decode_image(_saved(grey_alpha), "la.png")[0, 0].tolist() == [100, 100, 100]
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert decode_image(_saved(palette), "p.png")[0, 0].tolist() == [10, 20, 30]
    assert decode_image(_saved(Image.new("1", (3, 2), 1)), "b.png")[0, 0].tolist() == [255, 255, 255]


def _saved(picture: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


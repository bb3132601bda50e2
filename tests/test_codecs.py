"""Codecs: decoders by Content-Type, encoders by Accept, negotiation, and the protobuf answer."""

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from segmaker.data.recordio import read_records
from segmaker.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from segmaker.serving import codecs

MAX_PIXELS = 10_000_000


def _encoded(array: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _photo(height: int = 24, width: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("header", ["image/jpeg", "IMAGE/PNG", "application/x-image",
                                    "image/jpeg; charset=binary", " image/png ;q=1"])
def test_supported_content_types_ignore_case_and_parameters(header):
    assert codecs.decoder_for(header) is codecs.decode_image


@pytest.mark.parametrize("header", [None, "", "text/plain", "image/gif", "application/json"])
def test_unsupported_content_type_is_415_naming_the_supported_ones(header):
    with pytest.raises(UnsupportedMediaType, match="image/jpeg, image/png, application/x-image"):
        codecs.decoder_for(header)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_gives_rgb_of_the_image_size(fmt):
    image = codecs.decode_image(_encoded(_photo(), fmt), MAX_PIXELS)
    assert image.shape == (24, 40, 3) and image.dtype == np.uint8


def test_png_decodes_losslessly_whatever_its_declared_type():
    photo = _photo()
    body = _encoded(photo, "PNG")
    decoder = codecs.decoder_for("image/jpeg")  # mislabelled: the bytes are sniffed
    np.testing.assert_array_equal(decoder(body, MAX_PIXELS), photo)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_other_colour_modes_become_rgb(mode):
    assert codecs.decode_image(_encoded(_photo(), "PNG", mode), MAX_PIXELS).shape == (24, 40, 3)


def test_empty_body_is_400():
    with pytest.raises(BadRequest, match="empty"):
        codecs.decode_image(b"", MAX_PIXELS)


@pytest.mark.parametrize("body", [b"hello world", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff" + b"\0" * 20])
def test_garbage_is_400(body):
    with pytest.raises(BadRequest, match="not a JPEG or PNG"):
        codecs.decode_image(body, MAX_PIXELS)


def test_gif_is_refused_even_though_pil_reads_it():
    buffer = io.BytesIO()
    Image.fromarray(_photo()).save(buffer, format="GIF")
    with pytest.raises(BadRequest, match="not a JPEG or PNG"):
        codecs.decode_image(buffer.getvalue(), MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_400(fmt):
    body = _encoded(_photo(64, 64), fmt)
    with pytest.raises(BadRequest, match="cannot be decoded"):
        codecs.decode_image(body[: len(body) // 2], MAX_PIXELS)


def test_pixel_limit_is_413():
    with pytest.raises(PayloadTooLarge, match="40x24 = 960 pixels"):
        codecs.decode_image(_encoded(_photo(), "PNG"), max_pixels=959)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bomb_is_refused_from_its_header_without_decoding():
    # A valid PNG header claiming 100000 x 100000 RGB pixels (30 GB decoded) with a few bytes of data.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        codecs.decode_image(bomb, MAX_PIXELS)
    assert time.perf_counter() - start < 1.0


def test_bomb_under_pils_own_threshold_is_refused_by_ours():
    header = struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0)  # 25 MP greyscale
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    with pytest.raises(PayloadTooLarge, match="5000x5000"):
        codecs.decode_image(bomb, MAX_PIXELS)


# --------------------------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize("accept, chosen", [
    (None, "image/png"),
    ("", "image/png"),
    ("*/*", "image/png"),
    ("image/*", "image/png"),
    ("application/json", "application/json"),
    ("application/json; charset=utf-8", "application/json"),
    ("application/x-protobuf", "application/x-protobuf"),
    ("application/x-recordio-protobuf", "application/x-recordio-protobuf"),
    ("application/*", "application/x-recordio-protobuf"),
    ("text/html, application/json;q=0.5, image/png;q=0.9", "image/png"),
    ("image/png;q=0.1, application/json", "application/json"),
    ("image/png;q=0, */*;q=0.5", "application/x-recordio-protobuf"),
    ("text/html, */*;q=0.1", "image/png"),
    ("APPLICATION/JSON", "application/json"),
    ("application/json;q=oops", "application/json"),
    # q-values: the most specific matching range sets a type's q; equal q goes to the ENCODERS order
    ("application/json;q=0.5, application/*;q=0.9", "application/x-recordio-protobuf"),
    ("application/x-protobuf;q=0.8, image/png;q=0.8", "image/png"),
    ("image/png;q=0.3, application/json;q=0.31", "application/json"),
    ("application/json;q=2, image/png;q=0.9", "application/json"),  # clamped to 1
    ("*;q=0.5, application/json;q=0.4", "image/png"),
    ('application/json;q=0.9;foo="a,b", image/png;q=0.8', "application/json"),  # a quoted comma
])
def test_accept_picks_the_best_supported_type(accept, chosen):
    assert codecs.negotiate(accept) == chosen


# Mostly the characters Accept headers are made of, so that many of the drawn headers parse.
ACCEPT_CHARACTERS = st.sampled_from(list("*/;,=q.0123456789 \"ajsonimgpex-\\\t")) | st.characters()


@settings(max_examples=300, deadline=None)
@given(header=st.text(alphabet=ACCEPT_CHARACTERS, max_size=60))
def test_any_accept_header_gives_a_supported_type_or_406(header):
    try:
        assert codecs.negotiate(header) in codecs.ENCODERS
    except NotAcceptable as exc:
        assert "matches no supported type; use one of: image/png" in exc.message


@pytest.mark.parametrize("accept", ["text/html", "image/jpeg", "application/json;q=0", "text/*", "*/*;q=0",
                                    "application/json;q=-1", "image/png;q=0, application/*;q=0.0"])
def test_unsatisfiable_accept_is_406_naming_the_supported_types(accept):
    with pytest.raises(NotAcceptable, match="image/png, application/x-recordio-protobuf"):
        codecs.encoder_for(accept)


# ----------------------------------------------------------------------------------------------- encoding


def test_png_answer_is_an_8_bit_single_channel_mask():
    mask = np.arange(24 * 40, dtype=np.uint8).reshape(24, 40) % 7
    picture = Image.open(io.BytesIO(codecs.encode_png(mask, ["a"] * 7)))
    assert picture.mode == "L" and picture.size == (40, 24)
    np.testing.assert_array_equal(np.asarray(picture), mask)


@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 3)))
def test_json_rle_round_trip(mask):
    document = json.loads(codecs.encode_json(mask, ["w", "x", "y", "z"]))
    assert document["shape"] == list(mask.shape)
    assert document["class_names"] == ["w", "x", "y", "z"]
    rle = document["mask_rle"]
    assert sum(rle["lengths"]) == mask.size
    restored = np.repeat(rle["values"], rle["lengths"]).reshape(document["shape"])
    np.testing.assert_array_equal(restored, mask)


def test_run_lengths_are_maximal():
    assert codecs.run_lengths(np.array([[0, 0, 1], [1, 1, 2]])) == ([0, 1, 2], [2, 3, 1])


def _record_class():
    """aialgs.data.Record from SageMaker's record.proto field numbers, with the real protobuf runtime."""
    fdp = descriptor_pb2.FileDescriptorProto(name="segmaker_test_record.proto", package="aialgs.data",
                                             syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    for name, scalar in (("Float32Tensor", F.TYPE_FLOAT), ("Int32Tensor", F.TYPE_INT32)):
        tensor = fdp.message_type.add(name=name)
        for number, (field_name, kind) in enumerate(
                (("values", scalar), ("keys", F.TYPE_UINT64), ("shape", F.TYPE_UINT64)), start=1):
            field = tensor.field.add(name=field_name, number=number, type=kind, label=F.LABEL_REPEATED)
            field.options.packed = True
    value = fdp.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    value.field.add(name="float32_tensor", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".aialgs.data.Float32Tensor", oneof_index=0)
    value.field.add(name="int32_tensor", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".aialgs.data.Int32Tensor", oneof_index=0)
    record = fdp.message_type.add(name="Record")
    entry = record.nested_type.add(name="FeaturesEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".aialgs.data.Value")
    record.field.add(name="features", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".aialgs.data.Record.FeaturesEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aialgs.data.Record"))


def test_protobuf_answer_is_one_recordio_record_the_protobuf_runtime_parses():
    rng = np.random.default_rng(1)
    probabilities = rng.random((3, 5, 7), dtype=np.float32)
    body = codecs.ENCODERS["application/x-recordio-protobuf"].encode(probabilities, ["a", "b", "c"])
    records = list(read_records(io.BytesIO(b"".join(body.chunks()))))
    assert len(records) == 1
    record = _record_class()()
    record.ParseFromString(bytes(records[0].payload))
    assert list(record.features["shape"].int32_tensor.values) == [1, 3, 5, 7]
    target = np.array(record.features["target"].float32_tensor.values, dtype=np.float32)
    np.testing.assert_array_equal(target, probabilities.ravel())


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, -1])
def test_varint_matches_protobuf(value):
    from segmaker.serving.protobuf import varint

    record_class = _record_class()
    record = record_class()
    record.features["v"].int32_tensor.values.append(value)
    assert varint(value) in record.SerializeToString()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.99])
def test_truncation_is_400_even_after_gluoncv_turned_on_pils_truncated_loading(fmt, keep):
    import gluoncv.data  # noqa: F401  (sets PIL's ImageFile.LOAD_TRUNCATED_IMAGES = True)
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES
    body = _encoded(_photo(64, 64), fmt)
    with pytest.raises(BadRequest, match="truncated"):
        codecs.decode_image(body[: int(len(body) * keep)], MAX_PIXELS)


def test_jpeg_with_trailing_bytes_after_eoi_is_accepted():
    body = _encoded(_photo(), "JPEG") + b"camera junk"
    assert codecs.decode_image(body, MAX_PIXELS).shape == (24, 40, 3)


# A served image is decoded by training's rule (data.decode.rgb_pixels), so a model sees the same pixels.
def _tagged(stored: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_served_images_are_turned_by_their_exif_orientation_as_in_training(orientation):
    from segmaker.data.decode import decode_image as training_decode

    stored = _photo(6, 10)
    body = _tagged(stored, orientation)
    served = codecs.decode_image(body, MAX_PIXELS)
    assert served.shape == ((10, 6, 3) if orientation >= 5 else (6, 10, 3))
    assert np.array_equal(served, training_decode(body, "x.png"))


def test_served_16_bit_grey_is_brought_to_8_bits_not_saturated():
    values = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    assert codecs.decode_image(buffer.getvalue(), MAX_PIXELS)[..., 1].tolist() == [[0, 4, 117, 255]]


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("LA", "PNG"), ("I;16", "PNG")])
def test_other_storage_modes_decode(mode, fmt):
    body = _encoded(_photo(), fmt, "L" if mode == "I;16" else mode)
    if mode == "I;16":
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(Image.open(io.BytesIO(body))).astype(np.uint16) * 257).save(buffer, "PNG")
        body = buffer.getvalue()
    assert Image.open(io.BytesIO(body)).mode == mode
    assert codecs.decode_image(body, MAX_PIXELS).shape == (24, 40, 3)

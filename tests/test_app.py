"""The Flask app with a real tiny model: routes, formats, sizes, every refusal, and a fuzzer (no 5xx)."""

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segmaker.data.recordio import read_records
from segmaker.environment import ServingSettings
from segmaker.serving.app import create_app
from tests.serving_model import CLASS_NAMES, image_bytes, tiny_predictor
from tests.test_codecs import _record_class

SETTINGS = ServingSettings(max_payload_mb=0.5, max_pixels=400 * 400)


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor("fcn", size=32)


@pytest.fixture(scope="module")
def client(predictor):
    return create_app(predictor, SETTINGS, workers=3).test_client()


def _invoke(client, body, content_type="image/jpeg", accept=None, attributes=None):
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    if attributes is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    return client.post("/invocations", data=body, headers=headers)


def _mask(response) -> np.ndarray:
    picture = Image.open(io.BytesIO(response.data))
    assert picture.mode == "L"
    return np.asarray(picture)


def test_ping_is_200_once_warm(client):
    assert client.get("/ping").status_code == 200


def test_execution_parameters(client):
    assert client.get("/execution-parameters").get_json() == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 0.5}


@pytest.mark.parametrize("height, width", [(1, 1), (17, 5), (32, 32), (50, 120), (120, 7), (300, 200)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_mask_has_the_input_size(client, height, width, fmt):
    response = _invoke(client, image_bytes(height, width, fmt), "application/x-image")
    assert response.status_code == 200 and response.mimetype == "image/png"
    mask = _mask(response)
    assert mask.shape == (height, width)
    assert mask.max() < len(CLASS_NAMES)


def test_png_is_the_default_for_star_accept(client):
    response = _invoke(client, image_bytes(20, 30), accept="*/*")
    assert response.mimetype == "image/png" and _mask(response).shape == (20, 30)


@pytest.mark.parametrize("accept, chosen", [
    ("image/png;q=0.2, application/json", "application/json"),
    ("application/json;q=0.5, */*;q=0.6", "image/png"),
    ("text/html, application/x-protobuf;q=0.1", "application/x-protobuf"),
])
def test_accept_q_values_choose_the_answer(client, accept, chosen):
    response = _invoke(client, image_bytes(9, 13), accept=accept)
    assert response.status_code == 200 and response.mimetype == chosen


@pytest.mark.parametrize("accept", ["application/x-recordio-protobuf", "application/x-protobuf"])
def test_protobuf_answer_has_probabilities_agreeing_with_the_mask(client, accept):
    body = image_bytes(21, 34, "PNG")
    response = _invoke(client, body, "image/png", accept)
    assert response.status_code == 200 and response.mimetype == accept
    (record_bytes,) = (bytes(r.payload) for r in read_records(io.BytesIO(response.data)))
    record = _record_class()()
    record.ParseFromString(record_bytes)
    shape = list(record.features["shape"].int32_tensor.values)
    assert shape == [1, 3, 21, 34]
    probabilities = np.array(record.features["target"].float32_tensor.values, np.float32).reshape(shape)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    mask = _mask(_invoke(client, body, "image/png"))
    assert (probabilities[0].argmax(axis=0) == mask).mean() > 0.99


def test_json_answer(client):
    response = _invoke(client, image_bytes(9, 13), accept="application/json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = json.loads(response.data)
    assert document["shape"] == [9, 13] and document["class_names"] == list(CLASS_NAMES)
    rle = document["mask_rle"]
    mask = np.repeat(rle["values"], rle["lengths"]).reshape(9, 13)
    np.testing.assert_array_equal(mask, _mask(_invoke(client, image_bytes(9, 13))))


def test_charset_parameter_is_ignored(client):
    assert _invoke(client, image_bytes(8, 8), "image/jpeg; charset=utf-8").status_code == 200


@pytest.mark.parametrize("body, content_type, accept, status, message", [
    (image_bytes(8, 8), "text/csv", None, 415, "Content-Type 'text/csv'"),
    (image_bytes(8, 8), "image/jpeg", "text/html", 406, "Accept 'text/html'"),
    (b"", "image/jpeg", None, 400, "empty"),
    (b"not an image", "image/png", None, 400, "not a JPEG or PNG"),
    (image_bytes(64, 64, "PNG")[:200], "image/png", None, 400, "cannot be decoded"),
    (image_bytes(401, 400, "PNG"), "image/png", None, 413, "pixels"),
    (b"\0" * 600_000, "image/png", None, 413, "limit of 524288"),
])
def test_refusals_carry_status_and_json_error(client, body, content_type, accept, status, message):
    response = _invoke(client, body, content_type, accept)
    assert response.status_code == status
    assert message in response.get_json()["error"]


@pytest.fixture(scope="module")
def default_client(predictor):
    return create_app(predictor, ServingSettings()).test_client()


DEFAULT_LIMIT = 10 * 2**20  # README: SAGEMAKER_MAX_PAYLOAD_IN_MB defaults to 10 (MiB: the settings' bytes)


def test_the_default_payload_limit_is_10_mb_and_its_413_names_it(default_client):
    response = _invoke(default_client, b"\0" * (DEFAULT_LIMIT + 1), "image/png")
    assert response.status_code == 413
    assert response.get_json()["error"] == (
        "the request body has 10485761 bytes, more than the limit of 10485760 bytes"
        " (SAGEMAKER_MAX_PAYLOAD_IN_MB=10)")
    at_the_limit = _invoke(default_client, b"\0" * DEFAULT_LIMIT, "image/png")
    assert at_the_limit.status_code == 400 and "not a JPEG or PNG" in at_the_limit.get_json()["error"]


def test_a_chunked_body_over_the_limit_is_413(client):
    """Without Content-Length (chunked; gunicorn marks such input terminated) the body is read up to the
    limit + 1 byte, then refused."""
    over = b"\0" * (int(0.5 * 2**20) + 1)
    headers = {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}
    response = client.post("/invocations", input_stream=io.BytesIO(over), headers=headers,
                           environ_base={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert response.get_json()["error"] == (
        "the request body is longer than the limit of 524288 bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB=0.5)")


def test_unknown_route_and_method_answer_json(client):
    assert client.get("/nope").get_json()["error"]
    response = client.get("/invocations")
    assert response.status_code == 405 and response.get_json()["error"]


def test_too_many_probabilities_is_413_with_the_numbers(predictor):
    client = create_app(predictor, ServingSettings(max_probability_values=299)).test_client()
    response = _invoke(client, image_bytes(10, 10), accept="application/x-protobuf")
    assert response.status_code == 413
    assert ("100 pixels x 3 classes = 300 values exceed the limit of 299 (SEGMAKER_MAX_PROBABILITY_VALUES)"
            in response.get_json()["error"])
    client = create_app(predictor, ServingSettings(max_probability_values=300)).test_client()
    assert _invoke(client, image_bytes(10, 10), accept="application/x-protobuf").status_code == 200


@pytest.mark.parametrize("attributes, message", [
    ("scale=0.5;colour=red", "unknown custom attribute 'colour'"),
    ("tta=rotate", "tta='rotate': expected flip or none"),
    ("scale=0", "scale='0': expected a number in (0, 8]"),
    ("scale=nan", "scale='nan'"),
    ("scale", "custom attribute 'scale' needs a value"),
])
def test_bad_custom_attributes_are_400_naming_them(client, attributes, message):
    response = _invoke(client, image_bytes(20, 30), attributes=attributes)
    assert response.status_code == 400 and message in response.get_json()["error"]


@pytest.mark.parametrize("attributes", ["scale=0.5", "tta=flip", "scale=2, tta=flip", " TTA=none ;", ""])
def test_custom_attributes_keep_the_answer_at_the_input_size(client, attributes):
    response = _invoke(client, image_bytes(40, 70), attributes=attributes)
    assert response.status_code == 200 and _mask(response).shape == (40, 70)


def test_flip_changes_what_the_model_sees(client):
    body = image_bytes(32, 32, "PNG")
    plain = _invoke(client, body, "image/png", "application/x-protobuf")
    flipped = _invoke(client, body, "image/png", "application/x-protobuf", attributes="tta=flip")
    assert plain.status_code == flipped.status_code == 200 and plain.data != flipped.data


def test_a_scale_beyond_the_pixel_limit_is_413(predictor):
    # base_size: the long side becomes working size (32) x 8 = 256 pixels; the limit allows 200 x 200.
    client = create_app(predictor, ServingSettings(max_pixels=200 * 200)).test_client()
    response = _invoke(client, image_bytes(30, 40), attributes="scale=8")
    assert response.status_code == 413 and "scale=8 makes the image 256x192" in response.get_json()["error"]


def _other_formats() -> list:
    """Bodies in the storage modes people send: 16-bit grey PNG, CMYK JPEG, LA PNG, EXIF-rotated JPEG."""
    bodies = []
    for picture, fmt, extra in [
        (Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500), "PNG", {}),
        (Image.new("CMYK", (11, 7), (10, 200, 30, 5)), "JPEG", {}),
        (Image.new("LA", (9, 13), (90, 30)), "PNG", {}),
        (Image.open(io.BytesIO(image_bytes(8, 14))), "JPEG", {"exif": _orientation(6)}),
    ]:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **extra)
        bodies.append(buffer.getvalue())
    return bodies


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_other_storage_modes_are_answered_at_their_shown_size(client):
    shapes = [_mask(_invoke(client, body)).shape for body in _other_formats()]
    assert shapes == [(10, 12), (7, 11), (13, 9), (14, 8)]  # the EXIF-rotated photo is shown 8 wide


VALID_BODIES = [image_bytes(12, 20, "JPEG"), image_bytes(15, 9, "PNG")] + _other_formats()
CONTENT_TYPES = ["image/jpeg", "image/png", "application/x-image", "text/plain", "", "image/png; x=y"]
ACCEPTS = [None, "*/*", "image/png", "application/json", "application/x-protobuf", "text/html", ";;,q=",
           "image/png;q=abc, */*;q=-1"]


ATTRIBUTES = [None, "scale=0.5", "scale=3;tta=flip", "tta=flip", "scale=1e-9", "scale=8", "scale=-1", "x=y",
              "scale=inf", ";,;", "tta="]


def _latin1(text):
    # HTTP header values are latin-1; hypothesis' text may hold any code point.
    if text is None:
        return None
    return "".join(c if " " <= c <= "~" or c >= "\xa0" else " "
                   for c in text.encode("latin-1", "replace").decode("latin-1"))


def _mutated(base: bytes, data) -> bytes:
    body = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    return bytes(body)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_invocations_never_answer_5xx(client, data):
    if data.draw(st.booleans()):
        body = _mutated(data.draw(st.sampled_from(VALID_BODIES)), data)
    else:
        body = data.draw(st.binary(max_size=200))
    attributes = data.draw(st.one_of(st.sampled_from(ATTRIBUTES), st.text(max_size=30)))
    response = _invoke(client, body, data.draw(st.sampled_from(CONTENT_TYPES)),
                       data.draw(st.sampled_from(ACCEPTS)), _latin1(attributes))
    assert response.status_code < 500, response.data
    if response.status_code != 200:
        assert response.get_json()["error"]

"""Request decoding and response encoding, one function per MIME type (sagemaker-inference-toolkit shape).

DECODERS map a request Content-Type to `decode(body, max_pixels) -> H x W x 3 uint8 RGB`. All three
accepted types sniff the bytes, so a PNG sent as image/jpeg still works; only JPEG and PNG are decoded.
The pixel count is read from the image header and refused (413) before any pixel is decoded, so a
decompression bomb costs nothing.

ENCODERS map an Accept type to an `Encoder`: whether it needs class probabilities (C x H x W float32)
or only the mask (H x W uint8 class ids), and the function producing the response body:

- image/png (the default): an 8-bit single-channel PNG of class ids, same H x W as the input.
- application/x-recordio-protobuf, application/x-protobuf: the built-in algorithm's answer, one
  RecordIO-wrapped `aialgs.data.Record` with features `target` (float32, the probabilities, C-major) and
  `shape` (int32, [1, C, H, W]).
- application/json: the mask, run-length encoded over its row-major pixels:
      {"shape": [H, W], "class_names": [...],
       "mask_rle": {"values": [class ids], "lengths": [run lengths]}}
  `numpy.repeat(values, lengths).reshape(H, W)` restores the mask; the lengths sum to H * W.

Adding a format is one function and one dict entry; the lists of supported types in error messages
come from the dicts' keys.
"""

import io
import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_list_header, parse_options_header

from segmaker.data.decode import PIL_ERRORS, ImageDecodeError, rgb_pixels
from segmaker.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from segmaker.serving.protobuf import ProbabilityAnswer

DEFAULT_ACCEPT = "image/png"
_SNIFFED_FORMATS = ("JPEG", "PNG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG level 1 is several times faster than the default 6 and class-id masks still compress well.
_PNG_COMPRESS_LEVEL = 1


def media_type(header: Optional[str]) -> str:
    """The bare, lower-case MIME type of a header value: parameters such as `; charset=…` are dropped."""
    return (header or "").split(";", 1)[0].strip().lower()


# ---------------------------------------------------------------------------------------------- decoding


def decode_image(body: bytes, max_pixels: int) -> np.ndarray:
    """JPEG or PNG bytes (sniffed) -> H x W x 3 uint8 RGB as `data.decode.rgb_pixels` turns any picture
    (EXIF orientation applied: H x W as the picture is shown); 400 if undecodable, 413 if too many pixels."""
    if not body:
        raise BadRequest("the request body is empty: send a JPEG or PNG image")
    picture = _open_header(body)
    width, height = picture.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image has {width}x{height} = {width * height} pixels, "
                              f"more than the limit of {max_pixels}")
    problem = _truncation(body, picture.format)
    if problem:
        raise BadRequest(f"the {picture.format} image cannot be decoded: {problem}")
    try:
        picture.load()
        # The training rule (EXIF orientation, 16-bit grey, CMYK/LA/P/1), so served masks match training's.
        return rgb_pixels(picture)
    except ImageDecodeError as exc:
        raise BadRequest(f"the {picture.format} image cannot be used: {exc}") from None
    except PIL_ERRORS as exc:
        raise BadRequest(f"the {picture.format} image cannot be decoded: {exc}") from None


def _truncation(body: bytes, fmt: str) -> str:
    """Why the file is cut short, or "" when it is complete.

    PIL would say so itself, but GluonCV sets PIL's process-wide LOAD_TRUNCATED_IMAGES when imported
    (gluoncv/data/mhp.py), after which truncated files decode silently with grey filler; so the structure
    is checked here, independently of that flag.
    """
    if fmt == "PNG":
        return _png_truncation(body)
    # A JPEG's last scan (after its last SOS marker) ends with EOI. Neither marker can occur inside
    # entropy-coded data (0xFF is byte-stuffed there), and an EXIF thumbnail's EOI comes before the scans.
    last_scan = body.rfind(b"\xff\xda")
    if last_scan < 0 or body.find(b"\xff\xd9", last_scan) < 0:
        return "the file is truncated (no end-of-image marker after the last scan)"
    return ""


def _png_truncation(body: bytes) -> str:
    """Walk the PNG chunks (length, type, data, CRC) up to IEND."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(body):
        length = int.from_bytes(body[offset: offset + 4], "big")
        kind = body[offset + 4: offset + 8]
        end = offset + 12 + length
        if end > len(body):
            return f"the file is truncated inside its {kind!r} chunk at byte offset {offset}"
        if kind == b"IEND":
            return ""
        offset = end
    return f"the file is truncated after {len(body)} bytes (no IEND chunk)"


def _open_header(body: bytes) -> Image.Image:
    """Parse only the header (PIL decodes pixels lazily); refuse what is neither JPEG nor PNG."""
    try:
        return Image.open(io.BytesIO(body), formats=_SNIFFED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels: {exc}") from None
    except PIL_ERRORS:
        raise BadRequest(f"the body ({len(body)} bytes, starting {body[:8]!r}) is not a JPEG or PNG image"
                         ) from None


DECODERS: Dict[str, Callable[[bytes, int], np.ndarray]] = {
    "image/jpeg": decode_image,
    "image/png": decode_image,
    "application/x-image": decode_image,
}


def decoder_for(content_type_header: Optional[str]) -> Callable[[bytes, int], np.ndarray]:
    """The decoder for a Content-Type header, or 415 naming the supported types."""
    content_type = media_type(content_type_header)
    decoder = DECODERS.get(content_type)
    if decoder is None:
        raise UnsupportedMediaType("Content-Type {!r} is not supported; use one of: {}"
                                   .format(content_type or "(none)", ", ".join(DECODERS)))
    return decoder


# ---------------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Encoder:
    """How to answer in one format: from class probabilities (`Probabilities`) or from the mask (H x W).
    `encode` returns the body: bytes, or a `ProbabilityAnswer` (sent chunk by chunk from its buffer)."""

    needs_probabilities: bool
    encode: Callable[..., object]


def encode_png(mask: np.ndarray, class_names: Sequence[str]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L").save(
        buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


Allocate = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class Probabilities:
    """Class probabilities of an H x W image not computed yet: `write(allocate)` computes them into the
    C x H x W float32 array `allocate(C)` returns, so an encoder can hand out its own buffer."""

    height: int
    width: int
    write: Callable[[Allocate], None]

    @classmethod
    def of(cls, array: np.ndarray) -> "Probabilities":
        """Probabilities already computed (C x H x W)."""
        def write(allocate: Allocate) -> None:
            allocate(array.shape[0])[...] = array

        return cls(array.shape[1], array.shape[2], write)


def encode_recordio_protobuf(probabilities, class_names: Sequence[str]) -> ProbabilityAnswer:
    """The built-in's answer, the probabilities written straight into the response buffer (one copy).
    `probabilities`: a `Probabilities`, or a C x H x W array."""
    if isinstance(probabilities, np.ndarray):
        probabilities = Probabilities.of(probabilities)
    answers: List[ProbabilityAnswer] = []

    def allocate(num_classes: int) -> np.ndarray:
        answers.append(ProbabilityAnswer(num_classes, probabilities.height, probabilities.width))
        return answers[-1].values

    probabilities.write(allocate)
    return answers[-1]


def run_lengths(mask: np.ndarray) -> Tuple[List[int], List[int]]:
    """(values, lengths) of the runs of equal values in the row-major flattened mask."""
    flat = np.asarray(mask).ravel()
    if flat.size == 0:
        return [], []
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    lengths = np.diff(np.append(starts, flat.size))
    return flat[starts].tolist(), lengths.tolist()


def encode_json(mask: np.ndarray, class_names: Sequence[str]) -> bytes:
    values, lengths = run_lengths(mask)
    document = {"shape": list(mask.shape), "class_names": list(class_names),
                "mask_rle": {"values": values, "lengths": lengths}}
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


ENCODERS: Dict[str, Encoder] = {
    "image/png": Encoder(needs_probabilities=False, encode=encode_png),
    "application/x-recordio-protobuf": Encoder(needs_probabilities=True, encode=encode_recordio_protobuf),
    "application/x-protobuf": Encoder(needs_probabilities=True, encode=encode_recordio_protobuf),
    "application/json": Encoder(needs_probabilities=False, encode=encode_json),
}


# ------------------------------------------------------------------------------ per-request options

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
MAX_SCALE = 8.0


@dataclass(frozen=True)
class RequestOptions:
    """What `X-Amzn-SageMaker-Custom-Attributes` asks for: `scale=F` resamples the image by F before
    inference (0 < F <= 8; the answer keeps the input's size), `tta=flip` averages the logits of the image
    and its mirror image (`tta=none`: the default)."""

    scale: float = 1.0
    flip: bool = False


def _scale(value: str) -> Dict[str, object]:
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if not 0 < scale <= MAX_SCALE:  # also false for nan
        raise BadRequest(f"custom attribute scale={value!r}: expected a number in (0, {MAX_SCALE:g}]")
    return {"scale": scale}


def _tta(value: str) -> Dict[str, object]:
    if value.lower() not in ("flip", "none"):
        raise BadRequest(f"custom attribute tta={value!r}: expected flip or none")
    return {"flip": value.lower() == "flip"}


_ATTRIBUTES: Dict[str, Callable[[str], Dict[str, object]]] = {"scale": _scale, "tta": _tta}


def request_options(header: Optional[str]) -> RequestOptions:
    """Parse `key=value` pairs separated by `;` or `,` (SageMaker passes the header through as the client
    sent it); 400 naming an unknown key or a bad value."""
    options: Dict[str, object] = {}
    for pair in (header or "").replace(",", ";").split(";"):
        if not pair.strip():
            continue
        key, equals, value = pair.partition("=")
        key = key.strip().lower()
        if key not in _ATTRIBUTES:
            raise BadRequest(f"unknown custom attribute {key!r} in {CUSTOM_ATTRIBUTES_HEADER}; "
                             f"known: {', '.join(sorted(_ATTRIBUTES))}")
        if not equals:
            raise BadRequest(f"custom attribute {key!r} needs a value ({key}=...)")
        options.update(_ATTRIBUTES[key](value.strip()))
    return RequestOptions(**options)


# --------------------------------------------------------------------------------- content negotiation


def accepted(header: Optional[str]) -> MIMEAccept:
    """The Accept header as Werkzeug's `MIMEAccept`, read leniently: media ranges bare (parameters such
    as `charset=utf-8` dropped, as for Content-Type), `*` read as `*/*`, and a q that is not a number
    counts as 1, a number outside [0, 1] is clamped to it.

    Werkzeug's own reading (`request.accept_mimetypes`) would drop an entry whose q is malformed, and
    match `application/json; charset=utf-8` only against a type offered with that same parameter; both
    requests are answered as the client plainly meant. Werkzeug's header parsers split the value.
    """
    entries = []
    for item in parse_list_header(header or ""):
        media_range, parameters = parse_options_header(item)
        if media_range:
            entries.append(("*/*" if media_range == "*" else media_range, _quality(parameters.get("q"))))
    return MIMEAccept(entries)


def _quality(raw: Optional[str]) -> float:
    try:
        return min(max(float(raw), 0.0), 1.0) if raw is not None else 1.0
    except ValueError:
        return 1.0


def negotiate(accept_header: Optional[str]) -> str:
    """The supported type the Accept header prefers, by Werkzeug's `best_match`: the most specific
    matching range (exact > type/* > */*) gives each type its q, the highest q wins, ties go to the order
    of ENCODERS. No header (or an empty one): image/png. 406 when nothing supported is acceptable."""
    accept = accepted(accept_header)
    if not accept:
        return DEFAULT_ACCEPT
    best = accept.best_match(list(ENCODERS))
    if best is None:
        raise NotAcceptable("Accept {!r} matches no supported type; use one of: {}"
                            .format(accept_header, ", ".join(ENCODERS)))
    return best


def encoder_for(accept_header: Optional[str]) -> Tuple[str, Encoder]:
    """The response MIME type and its encoder for an Accept header."""
    chosen = negotiate(accept_header)
    return chosen, ENCODERS[chosen]

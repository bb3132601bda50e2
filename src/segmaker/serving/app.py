"""The Flask app SageMaker talks to: /ping, /invocations, /execution-parameters.

`/invocations` is decode -> predict -> encode (see `codecs`). Every refusal is an `HTTPError` with its
status, turned into `{"error": "..."}` by one handler; anything else is a bug and answers 500.
"""

import logging
from typing import TYPE_CHECKING, Optional

from flask import Flask, Request, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from segmaker.environment import ServingSettings
from segmaker.errors import BadRequest, HTTPError, PayloadTooLarge
from segmaker.serving import codecs

if TYPE_CHECKING:  # the predictor imports MXNet, which the gunicorn master must not load before forking
    from segmaker.serving.predictor import Predictor

LOG = logging.getLogger(__name__)

def create_app(predictor: "Predictor", settings: Optional[ServingSettings] = None,
               workers: int = 1) -> Flask:
    """A fresh app serving `predictor`; `workers` is what /execution-parameters reports."""
    settings = settings or ServingSettings()
    app = Flask(__name__)

    @app.errorhandler(HTTPError)
    def http_error(error: HTTPError) -> Response:
        response = jsonify(error=error.message)
        response.status_code = error.status
        return response

    @app.errorhandler(HTTPException)
    def routing_error(error: HTTPException) -> Response:
        # Flask's own refusals (404, 405) answer in the same JSON shape as ours.
        response = jsonify(error=error.description)
        response.status_code = error.code or 500
        return response

    @app.after_request
    def keep_connection_usable(response: Response) -> Response:
        return _finish_reading_body(request, response, settings.max_payload_bytes)

    @app.route("/ping", methods=["GET"])
    def ping() -> Response:
        # The app exists only once its worker has loaded and warmed up the model (server.load), so a
        # ping it answers is a ping of a ready model.
        return Response(status=200)

    @app.route("/execution-parameters", methods=["GET"])
    def execution_parameters() -> Response:
        return jsonify(MaxConcurrentTransforms=workers, BatchStrategy="SINGLE_RECORD",
                       MaxPayloadInMB=_whole_if_whole(settings.max_payload_mb))

    @app.route("/invocations", methods=["POST"])
    def invocations() -> Response:
        decode = codecs.decoder_for(request.headers.get("Content-Type"))
        accept, encoder = codecs.encoder_for(request.headers.get("Accept"))
        options = codecs.request_options(request.headers.get(codecs.CUSTOM_ATTRIBUTES_HEADER))
        image = decode(read_body(request, settings.max_payload_bytes), settings.max_pixels)
        processing_shape = predictor.processing_shape(image.shape[:2], options)
        _check_processing_size(processing_shape, options, settings.max_pixels)
        if encoder.needs_probabilities:
            height, width = image.shape[:2]
            _check_probability_size(height * width, predictor.num_classes, settings.max_probability_values)
            result = codecs.Probabilities(
                height, width, lambda allocate: predictor.write_probabilities(image, allocate, options))
        else:
            result = predictor.predict_mask(image, options)
        return _response(encoder.encode(result, predictor.class_names), accept)

    return app


_DRAIN_CHUNK = 64 * 1024


def _finish_reading_body(req: Request, response: Response, limit: int) -> Response:
    """Read (and drop) what the app left of the request body, so the kept-alive connection stays usable.

    A refusal (415, 406, 404, ...) is answered before the body is read. gunicorn then discards at most
    64 KB of it (gunicorn/http/parser.py, `Parser.finish_body`) and, with more left, closes the connection
    after an answer that promised keep-alive: the client's next request on it fails ("Remote end closed
    connection without response"). Reading the rest costs no more than a good request (the payload limit
    bounds it); a body over the limit is not read but answered with `Connection: close` (the Werkzeug server
    honours it; gunicorn drops that header, so `server.close_oversized_requests` tells it from the headers).
    """
    declared = req.content_length
    if declared is not None and declared > limit:
        response.headers["Connection"] = "close"
        return response
    budget = limit + 1
    try:
        while budget > 0:
            chunk = req.stream.read(min(_DRAIN_CHUNK, budget))
            if not chunk:
                return response
            budget -= len(chunk)
    except OSError:  # the client went away or sent a broken chunked body: nothing left to keep
        pass
    response.headers["Connection"] = "close"
    return response


def read_body(req: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes without reading more than limit + 1."""
    declared = req.content_length
    if declared is not None and declared > limit:
        raise _payload_too_large(f"has {declared} bytes, more than", limit)
    try:
        body = req.stream.read(limit + 1)
    except OSError as exc:  # client went away or sent a broken chunked body
        raise BadRequest(f"cannot read the request body: {exc}") from None
    if len(body) > limit:  # a chunked body: its length is only known by reading
        raise _payload_too_large("is longer than", limit)
    return body


def _payload_too_large(size: str, limit: int) -> PayloadTooLarge:
    """The 413 naming the limit in bytes and the setting that raises it, with its value (MB = 2^20 bytes)."""
    return PayloadTooLarge(f"the request body {size} the limit of {limit} bytes"
                           f" (SAGEMAKER_MAX_PAYLOAD_IN_MB={limit / 2 ** 20:g})")


def _whole_if_whole(value: float):
    """2.0 -> 2 (what SageMaker expects), 0.5 stays 0.5: truncating a fraction would report another limit."""
    return int(value) if float(value).is_integer() else value


def _response(body, mimetype: str) -> Response:
    if isinstance(body, bytes):
        return Response(body, status=200, mimetype=mimetype)
    # A ProbabilityAnswer: sent from its one buffer, a chunk at a time (no second copy of the whole answer).
    return Response(body.chunks(), status=200, mimetype=mimetype, headers={"Content-Length": str(len(body))})


def _check_processing_size(shape, options: codecs.RequestOptions, max_pixels: int) -> None:
    pixels = shape[0] * shape[1]
    if pixels > max_pixels:
        raise PayloadTooLarge(f"scale={options.scale:g} makes the image {shape[1]}x{shape[0]} = {pixels} "
                              f"pixels, more than the limit of {max_pixels} (SEGMAKER_MAX_PIXELS)")


def _check_probability_size(pixels: int, num_classes: int, limit: int) -> None:
    values = pixels * num_classes
    if values > limit:
        raise PayloadTooLarge(f"probabilities for {pixels} pixels x {num_classes} classes = {values} values "
                              f"exceed the limit of {limit} (SEGMAKER_MAX_PROBABILITY_VALUES); send a "
                              "smaller image or Accept image/png")

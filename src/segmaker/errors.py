"""Error types: what the user got wrong, what we got wrong, and what an HTTP client gets back.

UserError's message becomes the job's FailureReason (no traceback); any other exception is an
internal error whose traceback goes to the log. HTTPError carries its status so one handler in the
app turns any of them into a response.
"""


class UserError(Exception):
    """Bad configuration or data: the message alone must tell the user what to fix."""


class DataError(UserError):
    """A problem with one input file or record; the message names it."""


class HTTPError(Exception):
    """An error a request caused; `status` is the HTTP status code to answer with."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(HTTPError):
    status = 400


class NotAcceptable(HTTPError):
    status = 406


class PayloadTooLarge(HTTPError):
    status = 413


class UnsupportedMediaType(HTTPError):
    status = 415

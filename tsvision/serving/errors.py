"""Per-request errors: a value that becomes one HTTP status and one JSON body."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request (or one image of it) that gets an error answer; the rest of the batch is unaffected.

    ``status`` is the HTTP status for this request only, ``kind`` a stable machine-readable
    name, ``message`` says what was wrong and what is accepted.
    """

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.kind = kind
        self.message = message

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase

    def to_body(self) -> dict:
        return {"code": self.status, "type": self.kind, "message": self.message}

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.kind!r}, {self.message!r})"


def internal_error(kind: str, what: str) -> RequestError:
    """A 500 for an exception nobody foresaw. Call it inside ``except``: the traceback is logged
    under a fresh error id, and the answer carries that id, never the exception's own text."""
    error_id = uuid.uuid4().hex[:12]
    logger.exception("%s: %s (error id %s)", kind, what, error_id)
    return RequestError(500, kind, f"{what}; the server logged the cause under error id {error_id}")


def as_request_error(error: BaseException, kind: str, what: str) -> RequestError:
    """``error`` itself when it is a ``RequestError``, else an ``internal_error`` (inside ``except``)."""
    return error if isinstance(error, RequestError) else internal_error(kind, what)

"""Per-request errors: a value that becomes one HTTP status and one JSON body."""

from __future__ import annotations

from http import HTTPStatus


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

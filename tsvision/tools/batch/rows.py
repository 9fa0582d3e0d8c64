"""One output row per image: ``path``, ``status`` (the HTTP status TorchServe would give), ``answer``
(the served JSON, as text) or ``error_type`` and ``error_message``.

Status 0 means no request was made: the file could not be read (``error_type`` is the ``OSError``)."""

from __future__ import annotations

import json
import mimetypes
from typing import Any, Dict, Optional

FIELDS = ("path", "status", "answer", "error_type", "error_message")
UNREAD = 0  # the status of a file that could not be read: nothing was sent to the handler


def content_type(path: str) -> str:
    """What a client would send the file as: its extension's image type, else application/octet-stream."""
    guessed = mimetypes.guess_type(path.split("?", 1)[0])[0] or ""
    return guessed if guessed.startswith("image/") else "application/octet-stream"


def answered(path: str, status: int, body: Any) -> Dict[str, Any]:
    """The row of a handler's answer: a 2xx body is the answer, any other status's body the error."""
    text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    if not isinstance(text, str):
        text = json.dumps(text)
    if 200 <= status < 300:
        return row(path, status, answer=text)
    try:
        error = json.loads(text)
    except ValueError:
        error = None
    if isinstance(error, dict) and "type" in error:
        return row(path, status, error_type=str(error["type"]), error_message=str(error.get("message", "")))
    return row(path, status, error_type=f"HTTP{status}", error_message=text[:1000])


def failed(path: str, status: int, error_type: str, message: str) -> Dict[str, Any]:
    return row(path, status, error_type=error_type, error_message=message)


def row(path: str, status: int, answer: Optional[str] = None, error_type: Optional[str] = None,
        error_message: Optional[str] = None) -> Dict[str, Any]:
    return {"path": path, "status": int(status), "answer": answer, "error_type": error_type,
            "error_message": error_message}

"""TorchServe request rows -> image payloads (bytes), or an ``InputError`` for that request.

A row is what TorchServe hands the handler for one request: ``{"data": ...}`` or
``{"body": ...}`` holding raw bytes, text, or JSON already parsed by the worker.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, List, Mapping, Union

from handlers.errors import InputError

JSON_IMAGE_FIELDS = ("data", "image", "b64", "bytes")
HOW_TO_SEND = 'send the image bytes as the body, or JSON {"data": "<base64 image>"}'


def payload_from_row(row: Any) -> Union[bytes, InputError]:
    """The image bytes of one TorchServe request row."""
    try:
        return _payload(_unwrap(row))
    except InputError as error:
        return error


def payloads_from_rows(rows: List[Any]) -> List[Union[bytes, InputError]]:
    return [payload_from_row(row) for row in rows]


def _unwrap(row: Any) -> Any:
    if isinstance(row, Mapping):
        for key in ("data", "body"):
            if row.get(key) is not None:
                return row[key]
        if len(row) == 1:  # multipart form data: one field, any name
            return next(iter(row.values()))
        raise InputError(400, "MissingImage", f"the request has no image; {HOW_TO_SEND}")
    return row


def _payload(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return decode_base64(value)
    if isinstance(value, Mapping):
        for key in JSON_IMAGE_FIELDS:
            if key in value:
                field = value[key]
                if isinstance(field, Mapping) and "b64" in field:  # {"data": {"b64": ...}} (TF serving style)
                    field = field["b64"]
                if not isinstance(field, str):
                    raise InputError(400, "BadJson", f'JSON field "{key}" must be a base64 string; {HOW_TO_SEND}')
                return decode_base64(field)
        raise InputError(400, "MissingImage", f"the JSON has no image field (one of {list(JSON_IMAGE_FIELDS)}); {HOW_TO_SEND}")
    raise InputError(400, "BadRequest", f"cannot read a request of type {type(value).__name__}; {HOW_TO_SEND}")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding or a ``data:...;base64,`` prefix."""
    text = text.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(400, "BadBase64", f"the image text is not valid base64; {HOW_TO_SEND}") from None

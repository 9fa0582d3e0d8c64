"""One TorchServe request -> its images, and the images' answers -> that request's response.

A request row is what TorchServe hands the handler: ``{name: value}`` with one entry per body
part (``body``/``data`` for a plain body, the field names for multipart form data). Values
are bytes, text, or JSON the worker already parsed. Supported shapes:

- raw image bytes (``image/*``, ``application/octet-stream``, or no content type);
- text holding base64; JSON ``{"data": "<base64>"}`` (also ``image``/``b64``, a data URL,
  URL-safe base64, ``{"b64": ...}``);
- several images: ``{"instances": [...]}`` (KServe v1, answered ``{"predictions": [...]}``),
  a JSON list, ``{"data": [...]}``, or several multipart files (answered as a list);
- KServe v2 / Open Inference Protocol: ``{"inputs": [{"datatype": "BYTES", "data": [...]}]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from tsvision.serving.errors import RequestError
from tsvision.serving.options import PARSERS

OPTION_NAMES = frozenset(PARSERS)
ROUTING_FIELDS = ("model_name", "model_version")  # query parameters of TorchServe's /invocations
MAX_OPTION_TEXT = 200  # a row entry this short and printable is an option, never an image
# JSON body keys that are not options: the image fields and the envelopes' own keys.
BODY_KEYS = frozenset(("instances", "inputs", "id", "parameters", "outputs"))
# Request parameters of the KServe v2 protocol and its extensions (tritonclient sends
# binary_data_output on every call without requested outputs): not options, ignored.
OIP_PROTOCOL_PARAMETERS = frozenset(("binary_data_output", "binary_data", "sequence_id", "sequence_start",
                                     "sequence_end", "priority", "timeout", "headers"))

JSON_IMAGE_FIELDS = ("data", "image", "b64", "bytes")
HOW_TO_SEND = 'send the image bytes as the body, or JSON {"data": "<base64 image>"}'
ACCEPTED_TYPES = "image/*, application/octet-stream, application/json, text/plain or multipart/form-data"
DEFAULT_MAX_IMAGES = 64
# A gRPC StreamPredictions call carries this input next to "data" (GrpcClient.stream_predict sends
# it): TorchServe gives the handler no other way to tell a stream from a plain request.
STREAM_FIELD = "tsvision_stream"

Item = Union[bytes, RequestError]


@dataclass
class ParsedRequest:
    """The images of one request and the shape its answer must take."""

    items: List[Item]
    shape: str = "single"                   # single | list | kserve_v1 | kserve_v2
    extra: dict = field(default_factory=dict)  # kserve_v2: the request id and input name
    options: dict = field(default_factory=dict)      # options in the JSON body (OIP: "parameters"), unchecked
    row_options: dict = field(default_factory=dict)  # options as query parameters / form fields, unchecked


def parse_request(row: Any, content_types: Optional[Mapping[str, str]] = None,
                  max_images: int = DEFAULT_MAX_IMAGES) -> Union[ParsedRequest, RequestError]:
    """Parse one request row; a request-level problem (415, malformed JSON...) is returned."""
    try:
        parsed = _parse(row, {k: _media_type(v) for k, v in (content_types or {}).items()})
    except RequestError as error:
        return error
    if not parsed.items:
        return RequestError(400, "MissingImage", f"the request holds no image; {HOW_TO_SEND}")
    if len(parsed.items) > max_images:
        return RequestError(413, "TooManyImages",
                            f"the request holds {len(parsed.items)} images; at most {max_images} per request")
    return parsed


def format_response(parsed: ParsedRequest, answers: Sequence[Any], model_name: str = "",
                    model_version: str = "") -> Any:
    """The JSON body for one request, or the ``RequestError`` of its first bad image.

    A request with several images is answered whole or not at all: one bad image fails that
    request (its status and which image), never the other requests of the batch.
    """
    for position, answer in enumerate(answers):
        if isinstance(answer, RequestError):
            if len(answers) == 1:
                return answer
            return RequestError(answer.status, answer.kind, f"image {position} of {len(answers)}: {answer.message}")
    if parsed.shape == "single":
        return answers[0]
    if parsed.shape == "kserve_v1":
        return {"predictions": list(answers)}
    if parsed.shape == "kserve_v2":
        return v2_envelope(parsed, "answers", [json.dumps(a) for a in answers], model_name, model_version)
    return list(answers)


def v2_envelope(parsed: ParsedRequest, output: str, data: List[str], model_name: str, model_version: str) -> dict:
    """An Open Inference Protocol answer with one BYTES output."""
    return {"id": parsed.extra.get("id", ""), "model_name": model_name, "model_version": model_version,
            "outputs": [{"name": output, "shape": [len(data)], "datatype": "BYTES", "data": data}]}


# -- parsing -------------------------------------------------------------------------------
def is_stream(row: Any) -> bool:
    """Whether the row came from a gRPC StreamPredictions call marked by our client."""
    return isinstance(row, Mapping) and STREAM_FIELD in row


def _media_type(content_type: Any) -> str:
    if isinstance(content_type, Mapping):  # TorchServe's per-part headers: {"content-type": ...}
        content_type = content_type.get("content-type", "")
    return str(content_type or "").split(";")[0].strip().lower()


def _parse(row: Any, content_types: Mapping[str, str]) -> ParsedRequest:
    if not isinstance(row, Mapping):
        return ParsedRequest([_image_bytes(row)])
    row, row_options = split_options(row, content_types)
    parts = ([name for name in ("body", "data") if row.get(name) is not None][:1]
             or [n for n in row if n != STREAM_FIELD])
    if not parts:
        raise RequestError(400, "MissingImage", f"the request has no body; {HOW_TO_SEND}")
    if len(parts) == 1:
        parsed = _parse_value(row[parts[0]], content_types.get(parts[0], ""))
    else:  # multipart form data with several fields: one image per field, in order
        parsed = ParsedRequest([_single(_parse_value(row[name], content_types.get(name, "")), name) for name in parts],
                               "list")
    parsed.row_options = row_options
    return parsed


def split_options(row: Mapping[str, Any], content_types: Mapping[str, str]) -> Tuple[dict, dict]:
    """The row's image entries and its option entries (URL query parameters, form fields).

    TorchServe 0.12 passes a URL's query parameters to the handler on ``/invocations`` only
    (``?model_name=NAME&top_k=3``; it drops the query string of ``/predictions/NAME``).

    An entry is an option if its name is a known option, or if it is short text beside other
    entries (then an unknown option, refused later by name); never ``body``/``data``, an
    ``image/*`` part or the stream marker."""
    if len(row) < 2:
        return dict(row), {}
    images, options = {}, {}
    for name, value in row.items():
        if name in ROUTING_FIELDS:  # /invocations?model_name=...: TorchServe's own, not an option
            continue
        if name in OPTION_NAMES:
            options[name] = value
        elif (name in ("body", "data", STREAM_FIELD) or content_types.get(name, "").startswith("image/")
              or not _short_text(value)):
            images[name] = value
        else:
            options[name] = value
    return images, options


def _short_text(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_OPTION_TEXT:
            return False
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return False
    return (isinstance(value, (str, int, float, bool)) and len(str(value)) <= MAX_OPTION_TEXT
            and str(value).isprintable())


def _single(parsed: ParsedRequest, name: str) -> Item:
    if len(parsed.items) != 1:
        raise RequestError(400, "BadRequest",
                           f"form field {name!r} holds {len(parsed.items)} images; send one image per field")
    return parsed.items[0]


def _parse_value(value: Any, media_type: str) -> ParsedRequest:
    if media_type and not _accepted(media_type):
        raise RequestError(415, "UnsupportedMediaType",
                           f"content type {media_type!r} is not accepted; send {ACCEPTED_TYPES}")
    if isinstance(value, (bytes, bytearray)):
        if media_type == "application/json" or media_type.endswith("+json"):
            raise RequestError(400, "BadJson", f"the body is not valid JSON; {HOW_TO_SEND}")
        if media_type in ("", "application/octet-stream") and bytes(value[:1]) in (b"{", b"["):
            # JSON sent without a JSON content type (tritonclient does this): no image starts with "{" or "[".
            try:
                value = json.loads(bytes(value).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                pass
    if isinstance(value, Mapping):
        return _parse_json_object(value)
    if isinstance(value, list):
        return ParsedRequest([_instance(v) for v in value], "list")
    return ParsedRequest([_image_bytes(value)])


def _accepted(media_type: str) -> bool:
    return (media_type.startswith("image/") or media_type.endswith("+json") or media_type in (
        "application/octet-stream", "application/json", "text/plain", "multipart/form-data", "binary/octet-stream"))


def _parse_json_object(body: Mapping) -> ParsedRequest:
    if "inputs" in body:
        parsed = _parse_kserve_v2(body)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise RequestError(400, "BadJson", '"parameters" must be an object of options')
        parsed.options = {k: v for k, v in parameters.items() if k not in OIP_PROTOCOL_PARAMETERS}
        return parsed
    # Options: the known option names; other extra keys too (unknown options, refused by name)
    # when the body holds an image, else they stay out so the answer is "no image field".
    has_image = "instances" in body or any(k in body for k in JSON_IMAGE_FIELDS)
    options = {k: v for k, v in body.items() if k not in BODY_KEYS and k not in JSON_IMAGE_FIELDS
               and (has_image or k in OPTION_NAMES)}
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError(400, "BadJson", '"instances" must be a list of images')
        return ParsedRequest([_instance(v) for v in instances], "kserve_v1", options=options)
    for key in JSON_IMAGE_FIELDS:
        if key in body and isinstance(body[key], list):
            return ParsedRequest([_instance(v) for v in body[key]], "list", options=options)
    return ParsedRequest([_instance({k: v for k, v in body.items() if k not in options})], options=options)


def _parse_kserve_v2(body: Mapping) -> ParsedRequest:
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], Mapping):
        raise RequestError(400, "BadJson",
                           '"inputs" must hold exactly one input: '
                           '{"name": ..., "datatype": "BYTES", "shape": [n], "data": ["<base64>", ...]}')
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES" or not isinstance(tensor.get("data"), list):
        raise RequestError(400, "BadJson",
                           'the input must have "datatype": "BYTES" and "data": a list of base64 images')
    extra = {"id": str(body.get("id", "")), "input": tensor.get("name", "")}
    return ParsedRequest([_instance(v) for v in tensor["data"]], "kserve_v2", extra)


def _instance(value: Any) -> Item:
    """One image inside a JSON body; a bad one becomes that image's error."""
    try:
        if isinstance(value, str):
            return decode_base64(value)
        if isinstance(value, Mapping):
            for key in JSON_IMAGE_FIELDS:
                if key in value:
                    field_value = value[key]
                    if isinstance(field_value, Mapping) and "b64" in field_value:  # {"data": {"b64": ...}}
                        field_value = field_value["b64"]
                    if not isinstance(field_value, str):
                        raise RequestError(400, "BadJson", f'JSON field "{key}" must be a base64 string; {HOW_TO_SEND}')
                    return decode_base64(field_value)
            raise RequestError(400, "MissingImage",
                               f"the JSON has no image field (one of {list(JSON_IMAGE_FIELDS)}); {HOW_TO_SEND}")
        raise RequestError(400, "BadJson",
                           f"an image in JSON must be a base64 string or an object, not {type(value).__name__}")
    except RequestError as error:
        return error


def _image_bytes(value: Any) -> Item:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return _instance(value)
    return RequestError(400, "BadRequest", f"cannot read a request of type {type(value).__name__}; {HOW_TO_SEND}")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding or a ``data:...;base64,`` prefix."""
    text = text.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "BadBase64", f"the image text is not valid base64; {HOW_TO_SEND}") from None

"""A batch of requests -> one response each, with no TorchServe in sight.

All images of all good requests go through the task together (one forward pass); each
request then gets its own status and JSON body. The TorchServe adapter only moves data in and
out of this function, so tests and other servers can call it directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

from handlers.errors import RequestError, as_request_error
from handlers.requests import ParsedRequest, format_response, parse_request
from handlers.task import VisionTask


@dataclass
class Response:
    status: int
    body: Any  # JSON-ready
    headline: str = ""  # one-image answers: the label that sums it up (X-Top-Label)


def answer_requests(task: VisionTask, rows: Sequence[Any], content_types: Optional[Sequence[Mapping[str, Any]]] = None,
                    model_name: str = "", model_version: str = "") -> List[Response]:
    content_types = content_types or [{}] * len(rows)
    parsed = [_parse(row, types, task.settings.max_images) for row, types in zip(rows, content_types)]
    good = [p for p in parsed if isinstance(p, ParsedRequest)]
    items = [item for p in good for item in p.items]
    answers = task.run(items) if items else []
    responses, start = [], 0
    for request in parsed:
        if isinstance(request, RequestError):
            responses.append(_error(request))
            continue
        request_answers = answers[start:start + len(request.items)]
        start += len(request.items)
        responses.append(_respond(task, request, request_answers, model_name, model_version))
    return responses


def _parse(row: Any, content_types: Mapping[str, Any], max_images: int):
    try:
        return parse_request(row, content_types, max_images)
    except Exception as error:  # a bug met by this request only
        return as_request_error(error, "InternalError", "reading this request failed")


def _respond(task: VisionTask, request: ParsedRequest, answers: Sequence[Any], model_name: str, model_version: str) -> Response:
    try:
        body = format_response(request, answers, model_name, model_version)
        if isinstance(body, RequestError):
            return _error(body, request, model_name, model_version)
        return Response(200, body, task.headline(body) if request.shape == "single" else "")
    except Exception as error:
        return _error(as_request_error(error, "PostprocessError", "formatting this answer failed"), request, model_name, model_version)


def _error(error: RequestError, request: Optional[ParsedRequest] = None, model_name: str = "", model_version: str = "") -> Response:
    body = error.to_body()
    if request is not None and request.shape == "kserve_v2":
        # Open Inference Protocol errors keep the v2 envelope: TorchServe's gRPC frontend reads
        # id/model_name/model_version/outputs from every answer and fails the worker without them.
        # Over gRPC the frontend also drops our status, so the error travels as an "error" output.
        error_tensor = {"name": "error", "datatype": "BYTES", "shape": [1], "data": [json.dumps(body)]}
        body = {"id": request.extra.get("id", ""), "model_name": model_name, "model_version": model_version,
                "outputs": [error_tensor], "error": f"{error.status} {error.kind}: {error.message}", **body}
    return Response(error.status, body)

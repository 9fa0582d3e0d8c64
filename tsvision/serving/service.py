"""A batch of requests -> one response each, with no TorchServe in sight.

``Batch`` carries one TorchServe batch through the three steps: ``read_batch`` parses every
request and prepares all their images (``preprocess``), the task runs one forward pass over
the good ones (``inference``), and ``Batch.finish`` / ``Batch.responses`` give each request its
own status and JSON body (``postprocess``). ``answer_requests`` chains them for tests and
other servers.

``Batch.finish`` keeps each image's result object (``batch.results``) and its JSON-ready answer
(``batch.answers``, what ``Batch.update`` changes). A request that asks for a picture has its
decoded image kept by ``read_batch``; its result draws itself on that image (an answer a handler
changed is drawn from its JSON instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from tsvision.serving import drawing
from tsvision.serving.batching import ImageBatch
from tsvision.serving.errors import RequestError, as_request_error
from tsvision.serving.options import RequestOptions, resolve
from tsvision.serving.payloads import ParsedRequest, format_response, parse_request, v2_envelope
from tsvision.serving.results import Result
from tsvision.serving.tasks.base import VisionTask


@dataclass
class Response:
    status: int
    body: Any  # JSON-ready, or the picture's bytes
    headline: str = ""  # one-image answers: the label that sums it up (X-Top-Label)
    content_type: str = "application/json"  # image/png or image/jpeg: ``body`` is the picture


@dataclass
class Batch:
    """One batch between the hooks: a slot per request (its parsed images, or its error) and
    the images of all good requests, flattened in order."""

    requests: List[Union[ParsedRequest, RequestError]]
    images: ImageBatch
    rows: List[Any] = field(default_factory=list)     # the requests as TorchServe gave them
    answers: List[Any] = field(default_factory=list)  # per image, after ``finish``: JSON-ready, or its error
    options: List[Optional[RequestOptions]] = field(default_factory=list)  # per request (None: the archive's)
    results: List[Any] = field(default_factory=list)  # per image, after ``finish``: its result object, or its error
    # per explanation request's index: its ``explanations.Explanation`` (or error), its ``Response`` once answered
    explanations: Dict[int, Any] = field(default_factory=dict)
    _made: List[Any] = field(default_factory=list, repr=False)  # the answers ``finish`` made (to spot changed ones)

    def finish(self, task: VisionTask) -> "Batch":
        """Each image's result from its slice of the model outputs, and its JSON-ready answer."""
        self.results = list(task.finish_batch(self.images))
        self.answers = task.answers(self.results)
        self._made = list(self.answers)
        return self

    def update(self, change: Callable[[Any], Any]) -> "Batch":
        """Replace every good image's answer by ``change(answer)``; an exception in it is that
        image's 500 only (for handlers that edit answers)."""
        for position, answer in enumerate(self.answers):
            if not isinstance(answer, RequestError):
                try:
                    self.answers[position] = change(answer)
                except Exception as error:
                    self.answers[position] = as_request_error(error, "PostprocessError", "changing this answer failed")
                self._made[position] = None  # a changed answer is drawn from its JSON
        return self

    def result_at(self, position: int) -> Optional[Result]:
        """Image ``position``'s result object while its answer is the one ``finish`` made, else None."""
        made = self._made[position] if position < len(self._made) else None
        result = self.results[position] if made is not None and self.answers[position] is made else None
        return result if isinstance(result, Result) else None

    def responses(self, task: VisionTask, model_name: str = "", model_version: str = "") -> List[Response]:
        """One response per request, in order (call after ``finish``)."""
        responses, start = [], 0
        for index, request in enumerate(self.requests):
            if isinstance(request, RequestError):
                responses.append(_error(request))
                continue
            positions = range(start, start + len(request.items))
            answers = self.answers[start:start + len(request.items)]
            start += len(request.items)
            options = self.options[index] if index < len(self.options) else None
            if options is not None and options.picture:
                drawable = [(_either(self.result_at(p), answer), self.images.picture_at(p))
                            for p, answer in zip(positions, answers)]
                responses.append(_picture(task, request, answers, drawable, options, model_name, model_version))
            else:
                responses.append(_respond(task, request, answers, model_name, model_version))
        return responses


def read_batch(task: VisionTask, rows: Sequence[Any], content_types: Optional[Sequence[Mapping[str, Any]]] = None,
               refused: Optional[Mapping[int, RequestError]] = None) -> Batch:
    """Parse every request and prepare the images of the good ones (errors stay in their slots).
    ``refused`` answers some requests by index with an error before anything is read."""
    content_types = content_types or [{}] * len(rows)
    refused = refused or {}
    parsed = [refused[i] if i in refused else _parse(row, types, task.settings.max_images)
              for i, (row, types) in enumerate(zip(rows, content_types))]
    options: List[Optional[RequestOptions]] = []
    for index, (request, headers) in enumerate(zip(parsed, content_types)):
        checked = _options(task, request, headers) if isinstance(request, ParsedRequest) else None
        if isinstance(checked, RequestError):
            parsed[index], checked = checked, None
        options.append(checked)
    items, settings, keep = [], [], []
    for request, checked in zip(parsed, options):
        if isinstance(request, ParsedRequest):
            items.extend(request.items)
            settings.extend([checked.settings if checked else None] * len(request.items))
            keep.extend([bool(checked and checked.picture)] * len(request.items))  # drawn later on the decoded image
    return Batch(parsed, task.prepare_batch(items, settings, keep), list(rows), options=options)


def answer_requests(task: VisionTask, rows: Sequence[Any], content_types: Optional[Sequence[Mapping[str, Any]]] = None,
                    model_name: str = "", model_version: str = "") -> List[Response]:
    """All three steps in-process: one ``Response`` per request row."""
    batch = read_batch(task, rows, content_types)
    task.infer(batch.images)
    return batch.finish(task).responses(task, model_name, model_version)


def _parse(row: Any, content_types: Mapping[str, Any], max_images: int) -> Union[ParsedRequest, RequestError]:
    try:
        return parse_request(row, content_types, max_images)
    except Exception as error:  # a bug met by this request only
        return as_request_error(error, "InternalError", "reading this request failed")


def _options(task: VisionTask, request: ParsedRequest,
             headers: Mapping[str, Any]) -> Union[RequestOptions, RequestError, None]:
    """The request's checked options, its 400, or None when it set none (the common JSON case)."""
    accept = next((v for k, v in headers.items() if str(k).lower() == "accept"), None) if headers else None
    if not request.options and not request.row_options and (not accept or "image" not in str(accept).lower()):
        return None
    try:
        return resolve(task.options, task.archive_settings, task.labels, request.options, request.row_options, accept)
    except RequestError as error:
        return error
    except Exception as error:  # a bug met by this request only
        return as_request_error(error, "InternalError", "reading this request's options failed")


def _picture(task: VisionTask, request: ParsedRequest, answers: Sequence[Any], drawable: Sequence[Tuple[Any, Any]],
             options: RequestOptions, model_name: str, model_version: str) -> Response:
    """The request's answer drawn on its image(s): the picture bytes, or for the Open Inference
    Protocol a BYTES output of base64 pictures. Lists of images get a 400 (one picture per answer).
    ``drawable``: per image, (its result, or its JSON answer when a handler changed it; its decoded image)."""
    try:
        for answer in answers:
            if isinstance(answer, RequestError):
                return _respond(task, request, answers, model_name, model_version)
        if request.shape not in ("single", "kserve_v2"):
            raise RequestError(400, "BadOption", "option 'format': a picture answers one image; "
                                                 "send one image per request "
                                                 "(or use the Open Inference Protocol), or ask for JSON")
        pictures = [_draw(task, answer, image, options.picture) for answer, image in drawable]
        if request.shape == "kserve_v2":
            import base64

            encoded = [base64.b64encode(p).decode("ascii") for p in pictures]
            body = v2_envelope(request, "picture", encoded, model_name, model_version)
            body["outputs"][0]["parameters"] = {"content_type": options.picture}
            return Response(200, body)
        return Response(200, pictures[0], _headline(task, answers[0]), options.picture)
    except Exception as error:
        failure = as_request_error(error, "PostprocessError", "drawing this answer failed")
        return _error(failure, request, model_name, model_version)


def _draw(task: VisionTask, answer: Any, image: Optional[Image.Image], media_type: str) -> bytes:
    """The answer (a result, or a JSON answer) drawn on the image ``prepare`` decoded (EXIF rotation applied)."""
    if image is None:  # a batch prepared without keeping its pictures (e.g. an overridden preprocess)
        raise RequestError(500, "PostprocessError", "this request's decoded image was not kept for drawing")
    return drawing.encode(task.draw(image, answer), media_type)


def _respond(task: VisionTask, request: ParsedRequest, answers: Sequence[Any], model_name: str,
             model_version: str) -> Response:
    try:
        body = format_response(request, answers, model_name, model_version)
        if isinstance(body, RequestError):
            return _error(body, request, model_name, model_version)
        tensor = task.v2_tensor(answers) if request.shape == "kserve_v2" else None
        if tensor is not None:  # e.g. embeddings as one FP32 tensor
            body = {**body, "outputs": [tensor]}
        return Response(200, body, _headline(task, body) if request.shape == "single" else "")
    except Exception as error:
        failure = as_request_error(error, "PostprocessError", "formatting this answer failed")
        return _error(failure, request, model_name, model_version)


def _headline(task: VisionTask, body: Any) -> str:
    """The X-Top-Label value when the archive asks for it; a handler that reshaped the answer gets none."""
    if not task.settings.top_label_header:
        return ""
    try:
        return task.headline(body)
    except Exception:
        return ""


def _either(result: Optional[Result], answer: Any) -> Any:
    return answer if result is None else result


def _error(error: RequestError, request: Optional[ParsedRequest] = None, model_name: str = "",
           model_version: str = "") -> Response:
    body = error.to_body()
    if request is not None and request.shape == "kserve_v2":
        # Open Inference Protocol errors keep the v2 envelope: TorchServe's gRPC frontend reads
        # id/model_name/model_version/outputs from every answer and fails the worker without them.
        # Over gRPC the frontend also drops our status, so the error travels as an "error" output.
        body = {**v2_envelope(request, "error", [json.dumps(body)], model_name, model_version),
                "error": f"{error.status} {error.kind}: {error.message}", **body}
    return Response(error.status, body)

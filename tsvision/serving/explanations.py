"""TorchServe's ``/explanations/NAME``: why a classifier chose a class, per request.

TorchServe hands an explanation to the handler as a request with the header ``explain: True``,
possibly in one batch with predictions; each such request is read here (``read_explanation``:
its images, its options, each image decoded and prepared as a prediction's) and answered on its
own (``answer``): a saliency map (``tsvision.serving.attribution``) of the top class, or of the
class the request names, as JSON, or drawn over the photo (``Accept: image/png``). A bad image or
option is that request's 4xx; other tasks than classification answer 501.

Options (JSON body fields, multipart form fields, OIP ``parameters``): ``target`` (a label or a
class index), ``method`` (``integrated_gradients``: TorchScript only, the default there;
``occlusion``: every backend, the default elsewhere), ``steps`` (Integrated Gradients),
``window`` / ``stride`` (occlusion, in model-input pixels), ``format`` (json, png, jpeg).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
from PIL import Image

from tsvision.serving import attribution, drawing
from tsvision.serving.errors import RequestError, as_request_error
from tsvision.serving.geometry import center_crop_box, normalize
from tsvision.serving.options import PARSERS, _bad, _choice, _classes, _integer, picture_type
from tsvision.serving.payloads import ParsedRequest, format_response, parse_request
from tsvision.serving.service import Response, _error
from tsvision.serving.tasks.base import VisionTask

OPTIONS = ("target", "method", "steps", "window", "stride", "format")
DEFAULT_STEPS, MAX_STEPS = 32, 128   # Integrated Gradients: points on the path (each a forward and backward pass)
MAX_OCCLUSIONS = 1024                 # occlusion: occluded images (forward passes) per image
HEATMAP_CELLS = 32                    # the answered grid: cells along the photo's longer side
METHOD_OPTIONS = {"integrated_gradients": ("steps",), "occlusion": ("window", "stride")}


@dataclass(frozen=True)
class ExplainOptions:
    """One explanation request's checked options (``window``/``stride`` in model-input pixels)."""

    method: str
    target: Optional[int] = None   # None: the top class
    steps: int = DEFAULT_STEPS
    window: int = 0
    stride: int = 0
    picture: Optional[str] = None  # image/png or image/jpeg: answer the map drawn over the photo


@dataclass
class Explanation:
    """One explanation request: its images (each prepared: array, meta, decoded image; or its error)."""

    request: ParsedRequest
    options: ExplainOptions
    prepared: List[Any]


def not_supported(task: VisionTask) -> Optional[RequestError]:
    """The 501 of a task that gives no explanations; None for classification."""
    if task.name == "classification":
        return None
    return RequestError(501, "NotSupported", f"explanations are answered for classification archives; this one "
                                             f"serves {task.name}: send the image to /predictions/<model>")


def default_method(task: VisionTask) -> str:
    """Integrated Gradients where the runtime has gradients (TorchScript), else occlusion."""
    return "integrated_gradients" if getattr(task.runtime, "module", None) is not None else "occlusion"


def read_explanation(task: VisionTask, row: Any, headers: Mapping[str, Any]) -> Union[Explanation, RequestError]:
    """Parse one explanation request and prepare its images; a request-level problem is returned."""
    refused = not_supported(task)
    if refused is not None:
        return refused
    try:
        parsed = parse_request(row, headers, task.settings.max_images)
        if isinstance(parsed, RequestError):
            return parsed
        accept = next((v for k, v in headers.items() if str(k).lower() == "accept"), None)
        options = read_options(task, {**parsed.row_options, **parsed.options}, accept)
        if options.picture and parsed.shape not in ("single",):
            raise RequestError(400, "BadOption", "option 'format': a picture answers one image; send one image "
                                                 "per request, or ask for JSON")
        return Explanation(parsed, options, [task.prepare_item(item, keep=True) for item in parsed.items])
    except Exception as error:
        return as_request_error(error, "InternalError", "reading this explanation request failed")


def read_options(task: VisionTask, given: Mapping[str, Any], accept: Any = None) -> ExplainOptions:
    """The request's options checked against the task and its backend (``RequestError`` 400 or 501)."""
    unknown = sorted(name for name in given if name not in OPTIONS)
    if unknown:
        raise RequestError(400, "UnknownOption",
                           f"unknown option {unknown[0]!r}; an explanation's options are {list(OPTIONS)}")
    size = task.settings.input_size
    method = _choice("method", attribution.METHODS)(given["method"], ()) if "method" in given else default_method(task)
    if method == "integrated_gradients" and getattr(task.runtime, "module", None) is None:
        raise RequestError(501, "NotSupported",
                           f"method 'integrated_gradients' needs a model with gradients (TorchScript); this "
                           f"archive's backend is {task.runtime.name}: ask for method 'occlusion'")
    for name in given:
        if name in ("steps", "window", "stride") and name not in METHOD_OPTIONS[method]:
            raise _bad(name, _text(given[name]), f"only with method {_owner(name)!r} "
                                                 f"(this explanation uses {method!r})", "not an option of this method")
    target = None
    if "target" in given:
        try:
            classes = _classes(given["target"], task.labels)
        except RequestError as error:  # named after the option it checks here
            raise RequestError(400, error.kind, error.message.replace("option 'classes'", "option 'target'")) from None
        if len(classes) != 1:
            raise _bad("target", _text(given["target"]), "one label name or class index", "not one class")
        target = classes[0]
    steps = _integer("steps", 1, MAX_STEPS)(given["steps"], ()) if "steps" in given else DEFAULT_STEPS
    window = _integer("window", 1, size)(given["window"], ()) if "window" in given else max(1, size // 8)
    stride = _integer("stride", 1, size)(given["stride"], ()) if "stride" in given else max(1, window // 2)
    if method == "occlusion" and attribution.occlusion_count(size, window, stride) > MAX_OCCLUSIONS:
        count = attribution.occlusion_count(size, window, stride)
        raise RequestError(400, "BadOption", f"options 'window' {window} and 'stride' {stride} make {count} occluded "
                                             f"images on this model's {size}x{size} input; at most {MAX_OCCLUSIONS}: "
                                             "use a larger window or stride")
    fmt = PARSERS["format"](given["format"], ()) if "format" in given else None
    picture = {"png": "image/png", "jpeg": "image/jpeg"}.get(fmt) if fmt else picture_type(accept)
    return ExplainOptions(method, target, steps, window, stride, picture)


def answer(task: VisionTask, job: Union[Explanation, RequestError], model_name: str = "",
           model_version: str = "") -> Response:
    """The request's response: its explanations as JSON (in the request's shape), its picture, or its error."""
    if isinstance(job, RequestError):
        return _error(job)
    request = job.request
    try:
        answers: List[Any] = []
        for prepared in job.prepared:
            try:
                if isinstance(prepared, RequestError):
                    raise prepared
                answers.append(explain_image(task, prepared[0], prepared[2], job.options))
            except Exception as error:
                answers.append(as_request_error(error, "ExplanationError", "explaining this image failed"))
        answers_json = [a if isinstance(a, RequestError) else a[0] for a in answers]
        if job.options.picture and not isinstance(answers[0], RequestError):
            (body, heat), image = answers[0], job.prepared[0][2]
            picture = drawing.draw_heatmap(image, heat, body["region"])
            return Response(200, drawing.encode(picture, job.options.picture), body["label"], job.options.picture)
        body = format_response(request, answers_json, model_name, model_version)
        if isinstance(body, RequestError):
            return _error(body, request, model_name, model_version)
        if request.shape == "kserve_v1":
            body = {"explanations": body["predictions"]}
        return Response(200, body)
    except Exception as error:
        return _error(as_request_error(error, "ExplanationError", "explaining this request failed"), request,
                      model_name, model_version)


def explain_image(task: VisionTask, array: np.ndarray, image: Image.Image, options: ExplainOptions) -> tuple:
    """(the JSON-ready explanation, the normalised grid) of one prepared image (its model input
    ``array``, H×W×3 uint8, and the decoded ``image``)."""
    s = task.settings
    inputs = normalize(array[None], s.mean, s.std)[0]
    scores = attribution.scores(task.runtime, inputs[None])[0]
    target = int(np.argmax(scores)) if options.target is None else options.target
    if target >= scores.size:
        raise RequestError(400, "BadOption", f"option 'target': class {target} does not exist; "
                                             f"this model has {scores.size} classes (0..{scores.size - 1})")
    probabilities = _softmax(scores) if s.output == "logits" else scores
    extra: Dict[str, Any] = {}
    if options.method == "integrated_gradients":
        values, delta = attribution.integrated_gradients(task.runtime, inputs, target, options.steps)
        parameters: Dict[str, Any] = {"steps": options.steps, "baseline": "mean colour"}
        extra["convergence_delta"] = round(delta, 6)
    else:
        values = attribution.occlusion(task.runtime, inputs, target, options.window, options.stride)
        parameters = {"window": options.window, "stride": options.stride, "baseline": "mean colour",
                      "occlusions": attribution.occlusion_count(s.input_size, options.window, options.stride)}
    box = center_crop_box(image.size, s.resize_size, s.input_size)
    grid, peak = attribution.normalised(attribution.to_grid(attribution.saliency(values), box, image.size,
                                                            HEATMAP_CELLS))
    body = {"label": task.label(target), "index": target, "score": float(probabilities[target]),
            "method": options.method, "parameters": parameters,
            "heatmap": {"width": grid.shape[1], "height": grid.shape[0], "peak": peak,
                        "values": np.round(grid, 3).tolist(), "png": _png(grid)},
            "image_size": list(image.size), "region": [round(float(v), 2) for v in box], **extra}
    return body, grid


def _png(grid: np.ndarray) -> str:
    """A 0..1 grid as a base64 8-bit greyscale PNG, one pixel per cell."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(255 * grid).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def _owner(option: str) -> str:
    return next(method for method, names in METHOD_OPTIONS.items() if option in names)


def _text(value: Any) -> Any:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value

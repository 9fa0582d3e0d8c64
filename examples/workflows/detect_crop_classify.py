"""The function nodes of the detect -> crop -> classify workflow (``detect_crop_classify.yaml``; docs/workflows.md).

TorchServe runs each function named in the spec's ``dag`` as a model of its own (one worker, batch
size 1): ``function(data, context)`` gets the node's requests as rows of ``{name: value}`` and
returns one answer per row. A node with one parent gets that parent's answer as ``body`` (bytes);
a node with several parents gets one entry per parent, named after it. The nodes here::

    request ──> detector ──> combine
       │           │            ^
       └──────> crop ──> classifier

- ``request``: the workflow's request (image bytes, or JSON ``{"data": "<base64>", ...detection
  options}``) -> the detector's request, JSON ``{"data": "<base64 image>", ...the same options}``.
- ``crop``: the request and the detector's answer -> the classifier's request, the intermediate
  format: ``{"instances": ["<base64 PNG>", ...]}``, one crop per detection in the detector's order
  (``crop_box`` says which pixels), which tsvision's classifier answers ``{"predictions": [...]}``.
- ``combine``: the detector's and the classifier's answers -> the workflow's answer, each
  detection with ``"classification"``: the classifier's answer for its crop. An error of either
  model is answered as it came, ``{"code", "type", "message"}``, with ``"node"`` naming the model.

Only the standard library and Pillow are imported: the nodes run in any TorchServe environment.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

IMAGE_FIELDS = ("data", "image", "b64", "bytes")   # where a JSON request may hold its base64 image
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")  # kept as they are in a crop; other modes become RGB
Image.MAX_IMAGE_PIXELS = None  # the detector has already refused an image over its pixel limit


# -- the nodes -------------------------------------------------------------------------------------
def request(data: Optional[List[Mapping[str, Any]]], context: Any) -> Optional[List[str]]:
    """Start node: each workflow request -> the detector's JSON request (the crop node reads it too)."""
    if data is None:
        return None
    return [json.dumps(detector_request(row)) for row in data]


def crop(data: Optional[List[Mapping[str, Any]]], context: Any) -> Optional[List[str]]:
    """The request and the detector's answer -> ``{"instances": [crops]}``, the classifier's request."""
    if data is None:
        return None
    return [json.dumps({"instances": crops_for(row.get("request"), row.get("detector"))}) for row in data]


def combine(data: Optional[List[Mapping[str, Any]]], context: Any) -> Optional[List[str]]:
    """The detector's and the classifier's answers -> the detections, each with its classification."""
    if data is None:
        return None
    return [json.dumps(combined(row.get("detector"), row.get("classifier"))) for row in data]


# -- what they do ------------------------------------------------------------------------------
def detector_request(row: Mapping[str, Any]) -> Any:
    """The workflow request as the detector's JSON request. JSON passes as it is (image field and
    options; the detector refuses what it cannot read, in its own words); image bytes or base64
    text become ``{"data": "<base64>"}``."""
    body = next((row[name] for name in ("body", "data") if row.get(name) is not None), None)
    if body is None:  # multipart form data: the first file
        body = next((value for value in row.values() if isinstance(value, (bytes, bytearray))), b"")
    parsed = _json(body)
    if parsed is not None:
        return parsed
    if isinstance(body, str):
        return {"data": body}
    return {"data": base64.b64encode(bytes(body)).decode("ascii")}


def crops_for(request_json: Any, detector_answer: Any) -> List[str]:
    """Base64 PNG crops of the request's image, one per detection of ``detector_answer``; none
    when the detector answered an error or nothing (``combine`` answers those)."""
    detections = _detections(_json(detector_answer))
    if not detections:
        return []
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(request_image(_json(request_json)))))
    if image.mode not in PNG_MODES:
        image = image.convert("RGB")
    crops = []
    for detection in detections:
        buffer = io.BytesIO()
        image.crop(crop_box(detection["box"], image.size)).save(buffer, format="PNG")
        crops.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return crops


def crop_box(box: Sequence[float], size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """The pixels a detection box covers: x1, y1 rounded down, x2, y2 up, inside the image, at least 1×1."""
    width, height = size
    left = min(max(math.floor(box[0]), 0), width - 1)
    top = min(max(math.floor(box[1]), 0), height - 1)
    right = max(min(math.ceil(box[2]), width), left + 1)
    bottom = max(min(math.ceil(box[3]), height), top + 1)
    return left, top, right, bottom


def combined(detector_answer: Any, classifier_answer: Any) -> Any:
    """The workflow's answer: the detections, each with ``"classification"``; or the first error."""
    detections = _json(detector_answer)
    if isinstance(detector_answer, (bytes, bytearray)) and detections is None:
        return error(406, "NotAcceptable", "detector",
                     "the detector answered with a picture: the request's Accept header reaches every node, "
                     "and this workflow answers JSON; send Accept: application/json or none")
    if _is_error(detections):
        return {**detections, "node": "detector"}
    detections = _detections(detections)
    if detections is None:
        return error(400, "BadRequest", "detector",
                     "the detector's answer is not one image's detections: send one image per request (its bytes, "
                     'or JSON {"data": "<base64>"}), and a detector archive as the workflow\'s detector')
    if not detections:
        return []
    classes = _json(classifier_answer)
    if _is_error(classes):
        return {**classes, "node": "classifier"}
    predictions = classes.get("predictions") if isinstance(classes, dict) else None
    if not isinstance(predictions, list) or len(predictions) != len(detections):
        return error(502, "BadNodeAnswer", "classifier",
                     f"the classifier's answer is not {{\"predictions\": [...]}} with one answer per crop "
                     f"({len(detections)} crops)")
    return [{**detection, "classification": answer} for detection, answer in zip(detections, predictions)]


def request_image(request_json: Any) -> bytes:
    """The image bytes of the detector's request (``{"data": "<base64>"}``, also a data URL or URL-safe base64)."""
    text = next((request_json[key] for key in IMAGE_FIELDS if isinstance(request_json, dict)
                 and isinstance(request_json.get(key), str)), None)
    if text is None:
        raise ValueError("the detector's request holds no base64 image")
    text = "".join(text.split(",", 1)[1].split() if text.startswith("data:") else text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None)
    except (binascii.Error, ValueError):
        raise ValueError("the detector's request holds no valid base64 image") from None


def error(status: int, kind: str, node: str, message: str) -> dict:
    """An error answer in tsvision's shape, with the node it came from."""
    return {"code": status, "type": kind, "message": message, "node": node}


def _detections(answer: Any) -> Optional[list]:
    """``answer`` when it is one image's detections (a list of objects with a 4-number ``box``), else None."""
    if not isinstance(answer, list):
        return None
    for detection in answer:
        box = detection.get("box") if isinstance(detection, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            return None
    return answer


def _is_error(answer: Any) -> bool:
    return isinstance(answer, dict) and {"code", "type", "message"} <= answer.keys()


def _json(value: Any) -> Any:
    """A node's input as JSON: already parsed, or bytes/text holding JSON; None when it is not JSON."""
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, (bytes, bytearray)):
        if bytes(value[:1]) not in (b"{", b"["):
            return None
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return None

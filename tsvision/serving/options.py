"""Per-request options: read, check, and turn into the settings one request is answered with.

A request may carry options (docs/options.md) in three places; one precedence applies:

1. fields of a JSON body, next to ``data`` / ``instances`` (OIP: the request's ``parameters``);
2. URL query parameters and multipart form fields (TorchServe hands both to the handler as
   extra entries of the request row; with the same name, the form field wins in TorchServe);
3. the ``Accept`` header, for the answer's format only (``format`` in 1 or 2 wins over it).

Whatever a request does not set comes from the archive's settings. A task lists the options it
accepts in ``VisionTask.options``; each name here maps to one ``Settings`` field (``classes``
and ``format`` excepted), so a task reads ``self.settings.<name>`` in ``finish`` and gets the
request's value. A bad option is that request's ``RequestError`` (400) naming the option and
what is allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from tsvision.serving.errors import RequestError
from tsvision.serving.settings import EMBEDDING_FORMATS, MASK_FORMATS, MAX_TILE_OVERLAP, TILE_MODES, tile_size

PICTURE_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
FORMATS = ("json",) + tuple(PICTURE_TYPES)


def _text(value: Any) -> Any:
    """A form field or query parameter arrives as bytes or text; JSON values stay as they are."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8").strip()
    return value.strip() if isinstance(value, str) else value


def _integer(name: str, low: int, high: Optional[int] = None) -> Callable[[Any, Sequence[str]], int]:
    allowed = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")

    def parse(value: Any, labels: Sequence[str]) -> int:
        value = _text(value)
        if isinstance(value, bool):
            raise _bad(name, value, allowed)
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise _bad(name, value, allowed) from None
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            raise _bad(name, value, allowed)
        return value
    return parse


def _fraction(name: str, high: float = 1.0) -> Callable[[Any, Sequence[str]], float]:
    allowed = f"a number from 0 to {high:g}"

    def parse(value: Any, labels: Sequence[str]) -> float:
        value = _text(value)
        if isinstance(value, bool):
            raise _bad(name, value, allowed)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(name, value, allowed) from None
        if not math.isfinite(number) or not 0.0 <= number <= high:
            raise _bad(name, value, allowed)
        return number
    return parse


def _boolean(name: str) -> Callable[[Any, Sequence[str]], bool]:
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def parse(value: Any, labels: Sequence[str]) -> bool:
        value = _text(value)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise _bad(name, value, "true or false")
    return parse


def _choice(name: str, choices: Sequence[str]) -> Callable[[Any, Sequence[str]], str]:
    def parse(value: Any, labels: Sequence[str]) -> str:
        value = _text(value)
        if not isinstance(value, str) or value.lower() not in choices:
            raise _bad(name, value, f"one of {list(choices)}")
        return value.lower()
    return parse


def _classes(value: Any, labels: Sequence[str]) -> Tuple[int, ...]:
    """Label names or class indices: a JSON list, or comma-separated text ("person,dog" or "1,3")."""
    value = _text(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except ValueError:
                raise _bad("classes", value, "a list of label names or class indices") from None
        else:
            value = [part.strip() for part in stripped.split(",") if part.strip()]
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad("classes", value, "a non-empty list of label names or class indices")
    names: Dict[str, List[int]] = {}
    for index, name in enumerate(labels):  # a name may stand for several classes (COCO's "N/A")
        names.setdefault(name, []).append(index)
    count = len(labels)
    indices: List[int] = []
    for entry in value:
        if isinstance(entry, str) and entry in names:
            indices.extend(names[entry])
        elif isinstance(entry, str) and entry.isdigit() and (not count or int(entry) < count):
            indices.append(int(entry))
        elif isinstance(entry, int) and not isinstance(entry, bool) and 0 <= entry and (not count or entry < count):
            indices.append(entry)
        else:
            shown = ", ".join(labels[:20]) + (f", ... ({count} labels)" if count > 20 else "")
            allowed = f"label names ({shown}) or indices 0..{count - 1}" if count else "class indices >= 0"
            raise _bad("classes", entry, allowed, "unknown class")
    return tuple(sorted(set(indices)))


def _tile_size(value: Any, labels: Sequence[str]) -> tuple:
    try:
        return tile_size(_text(value))
    except ValueError as error:
        raise _bad("tile_size", value, str(error).split(",")[0]) from None


def _bad(name: str, value: Any, allowed: str, what: str = "bad value") -> RequestError:
    shown = value if isinstance(value, (int, float, bool)) else repr(value)[:60]
    return RequestError(400, "BadOption", f"option {name!r}: {what} {shown}; allowed: {allowed}")


# Every option any task knows: name -> parser(value, labels). A task accepts the names in its
# ``options``; ``mask_format`` is for the segmentation tasks, ``mask_threshold`` for instance segmentation.
PARSERS: Dict[str, Callable[[Any, Sequence[str]], Any]] = {
    "format": _choice("format", FORMATS),
    "top_k": _integer("top_k", 1),
    "score_threshold": _fraction("score_threshold"),
    "iou_threshold": _fraction("iou_threshold"),
    "max_detections": _integer("max_detections", 1, 10000),
    "classes": _classes,
    "agnostic_nms": _boolean("agnostic_nms"),
    "mask_format": _choice("mask_format", MASK_FORMATS),
    "mask_threshold": _fraction("mask_threshold"),
    "tile": _choice("tile", TILE_MODES),
    "tile_size": _tile_size,
    "tile_overlap": _fraction("tile_overlap", MAX_TILE_OVERLAP),
    "embedding_format": _choice("embedding_format", EMBEDDING_FORMATS),
}
COMMON = ("format",)  # accepted by every task


@dataclass(frozen=True)
class RequestOptions:
    """One request's checked options: the settings its images are finished with, and the
    picture type (``image/png``, ``image/jpeg``) when it asked for a picture instead of JSON."""

    settings: Any                   # Settings with the request's options applied
    picture: Optional[str] = None   # None: JSON
    given: Tuple[str, ...] = ()     # the option names the request set


def picture_type(accept: Any) -> Optional[str]:
    """The picture type an ``Accept`` header prefers (its highest-q supported entry), else None."""
    if not accept:
        return None
    ranked: List[Tuple[float, int, str]] = []
    for position, part in enumerate(str(accept).split(",")):
        media, *params = [p.strip().lower() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        ranked.append((-q, position, media))
    for q, _, media in sorted(ranked):
        if q == 0:
            break
        if media in ("image/png", "image/*"):
            return "image/png"
        if media in ("image/jpeg", "image/jpg"):
            return "image/jpeg"
        if media in ("application/json", "application/*", "*/*", "text/*", "text/plain"):
            return None
    return None


def resolve(accepted: Sequence[str], settings: Any, labels: Sequence[str], body: Mapping[str, Any],
            row: Mapping[str, Any], accept: Any = None) -> RequestOptions:
    """The request's options (body over query/form, ``format`` over ``Accept``) checked against
    ``accepted`` and applied to ``settings``; raises the ``RequestError`` of the first bad one."""
    raw = {**dict(row), **dict(body)}
    allowed = tuple(COMMON) + tuple(accepted)
    unknown = sorted(name for name in raw if name not in allowed)
    if unknown:
        raise RequestError(400, "UnknownOption",
                           f"unknown option {unknown[0]!r}; this model's options are {list(allowed)}")
    values = {name: PARSERS[name](raw[name], labels) for name in sorted(raw)}
    fmt = values.pop("format", None)
    picture = PICTURE_TYPES.get(fmt) if fmt else picture_type(accept)
    changes = {name: value for name, value in values.items()}
    try:
        effective = replace(settings, **changes) if changes else settings
    except TypeError:  # an option the settings do not hold (a task's own): keep the archive's
        effective = settings
    return RequestOptions(effective, picture, tuple(sorted(raw)))

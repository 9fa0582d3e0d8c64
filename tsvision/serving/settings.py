"""Handler settings: the ``handler:`` section of an archive's ``model-config.yaml``."""

from __future__ import annotations

import difflib
import json
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, List, Mapping, Optional

from tsvision.serving import formats, slicing
from tsvision.serving.images import DEFAULT_MAX_PIXELS

TASKS = ("classification", "segmentation", "detection", "instance_segmentation", "keypoints", "embedding")
DETECTING_TASKS = ("detection", "instance_segmentation", "keypoints")  # boxes, and the detection_format setting
RESIZE_MODES = ("stretch", "letterbox", "letterbox_center", "shorter_side")
INTERPOLATIONS = ("bilinear", "bicubic", "bilinear_float")  # the resize filter (geometry.RESIZERS); PIL's antialiased
# bilinear and bicubic as torchvision's presets name them, or F.interpolate's plain bilinear on floats (SSD/SSDlite)
MASK_FORMATS = ("png", "rle", "polygon")  # how masks are written (tsvision.serving.masks)
SPINNING = ("run", "never", "always")  # when ONNX Runtime's idle intra-op threads busy-wait (README)
TILE_MODES = ("never", "auto", "always")  # segmentation: when an image is cut into tiles (tsvision.serving.tiling)
EMBEDDING_FORMATS = ("json", "base64_float32", "base64_float16")  # how an embedding is answered (docs/embeddings.md)
QUANTIZATIONS = ("", "int8")  # "": a float model; "int8": statically quantised (tsvision export --quantize int8)
MIN_TILE, MAX_TILE, MAX_TILE_OVERLAP = 8, 4096, 0.9  # tile sides in pixels; the largest overlap fraction
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Settings:
    """Everything a task needs besides the model file. Unknown keys are rejected."""

    task: str
    labels: Optional[str] = None          # JSON list of names (or {"index": name}), relative to the model dir
    input_size: int = 224                  # side of the square tensor the model sees
    resize_size: int = 256                 # classification: shorter side before the centre crop
    interpolation: str = "bilinear"        # the resize filter: "bilinear" or "bicubic" (PIL, antialiased;
                                           # classification: the weights' preset), "bilinear_float"
                                           # (stretch/letterbox: as torchvision's SSD)
    resize_mode: str = "stretch"           # segmentation/detection: "stretch", "letterbox",
                                           # (detection) "letterbox_center"
                                           # or (segmentation) "shorter_side": torchvision's preset, any aspect ratio
    max_size: Optional[int] = None         # shorter_side: cap on the longer side (None: 2 × input_size)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    top_k: int = 5
    output: str = "logits"                 # classification: "logits" (softmax applied) or "probabilities"
    score_threshold: float = 0.5           # detection; multi-label classification: the default threshold per class
    multi_label: bool = False              # classification: sigmoid scores, every label above its threshold
    class_thresholds: Optional[dict] = None  # multi-label: {label name or index: threshold}; others: score_threshold
    embedding_format: str = "json"         # embedding: "json" (a list), "base64_float32", "base64_float16"
    iou_threshold: float = 0.5
    max_detections: int = 100
    pre_nms_top_k: int = 1000
    background_index: Optional[int] = None  # detection: class that means "no object" (ssd, torchvision formats)
    detection_format: str = "ssd"          # detecting tasks: the model's output layout (tsvision.serving.formats)
    agnostic_nms: bool = False             # detection: one NMS over all classes instead of per class
    classes: Optional[tuple] = None        # detection: keep only these class indices (None: all);
                                           # also a per-request option
    mask_threshold: float = 0.5            # instance_segmentation: soft mask -> pixel in the mask
    mask_format: Optional[str] = None      # masks: "png", "rle" (COCO run-length) or "polygon"; None: the task's
                                           # default (segmentation "png", instance_segmentation "rle")
    tile: str = "never"                    # segmentation: "auto" (tiles when the image's shorter side is over twice
                                           # the tile's), "always" or "never"; also a per-request option
    tile_size: Optional[tuple] = None      # segmentation: (width, height) of a tile, model-input pixels = original
                                           # pixels (None: input_size square); also a per-request option
    tile_overlap: float = 0.25             # segmentation: fraction of a tile shared with its neighbour; per request
    tile_batch: int = 4                    # segmentation: tiles (and other images) per forward pass at most
    keypoint_names: Optional[tuple] = None  # keypoints: names by index (None: COCO's 17)
    skeleton: Optional[tuple] = None       # keypoints: [a, b] index pairs to draw (None: COCO's)
    # Sliced inference of the detecting tasks (docs/large-images.md; sahi's names in brackets):
    slice_size: Optional[tuple] = None     # (width, height) of a slice; 640, "640x480"; None: the whole image only
    slice_overlap: float = 0.2             # fraction of a slice shared with the next (overlap_*_ratio)
    slice_merge: str = "greedy_nmm"        # "greedy_nmm", "nmm" or "nms" (postprocess_type)
    slice_match_metric: str = "ios"        # "ios" (over the smaller box) or "iou" (postprocess_match_metric)
    slice_match_threshold: float = 0.5     # overlap from which two detections merge (postprocess_match_threshold)
    slice_whole_image: bool = True         # add the whole image as one more slice (perform_standard_pred)
    max_slices: int = 256                  # slices of one image (with the whole image: one more); more: a 400
    max_pixels: int = DEFAULT_MAX_PIXELS    # decompression-bomb guard, per image
    max_images: int = 64                   # images in one request (lists, instances)
    threads: int = 0                       # model runtime threads; 0: the runtime's default
    spinning: str = "run"                  # ONNX Runtime: idle intra-op threads busy-wait within a run and sleep
                                           # after it ("run"), never ("never"), or also after it ("always")
    streams: Optional[int] = None          # runs of the model at once in one worker, each batch split among them
                                           # and the threads shared out; None: the task's default on a CPU
                                           # (docs/performance.md, "Streams"), 1 on a GPU
    preprocess_threads: int = 0            # threads decoding/resizing a batch's images; 0: one per CPU, 1: serial
    micro_batch: Optional[int] = None      # N > 0: run the model on N images at a time while the threads prepare
                                           # the next N and finish the last (one batch pipelined); a worker
                                           # without threads runs the N one chunk after another; 0: off;
                                           # None: the task's default with threads (4 for classification,
                                           # detection and segmentation, else 0), off without
    split_head: bool = True                # detection_format yolov8 on ONNX Runtime: run the graph to the head's raw
                                           # outputs and decode only the boxes above the threshold (checked equal
                                           # to the whole graph at load; formats/yolo_head.py); false: the whole graph
    decode_draft: bool = False             # classification: JPEGs decoded at a reduced scale (PIL's draft), lossy,
                                           # opt-in (fidelity in docs/performance.md)
    top_label_header: bool = False         # add X-Top-Label to one-image answers (the A/B router logs it)
    profile: bool = False                  # TorchServe's own key: per-step timings (ts_handler_*) as metrics
    random_weights: bool = False           # recorded by the export step; logged at load
    quantized: str = ""                    # "int8": the model file is quantised (set by tsvision archive from the
                                           # file); logged at load
    description: str = ""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "Settings":
        check_names_and_types(values)
        values = dict(values)
        if values.get("task") not in TASKS:
            raise ValueError(f"handler setting 'task' must be one of {TASKS}, got {values.get('task')!r}")
        record = formats.find(values["task"], values.get("detection_format", "ssd"))
        for key, value in (record.implied if record is not None else {}).items():  # the format's defaults
            values.setdefault(key, value)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if values.get("keypoint_names") is not None:
            values["keypoint_names"] = tuple(str(v) for v in values["keypoint_names"])
        if values.get("classes") is not None:
            values["classes"] = tuple(int(v) for v in values["classes"])
        if values.get("slice_size") is not None:
            values["slice_size"] = slicing.parse_slice_size(values["slice_size"])
        if values.get("tile_size") is not None:
            values["tile_size"] = tile_size(values["tile_size"])
        if values.get("skeleton") is not None:
            values["skeleton"] = tuple((int(a), int(b)) for a, b in values["skeleton"])
        if values.get("class_thresholds") is not None:
            values["class_thresholds"] = check_class_thresholds(values["class_thresholds"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.resize_mode == "letterbox_center" and self.task not in DETECTING_TASKS:
            raise ValueError(f"resize_mode 'letterbox_center' is for the tasks {DETECTING_TASKS} only")
        if self.resize_mode == "shorter_side" and self.task != "segmentation":
            raise ValueError("resize_mode 'shorter_side' is for the segmentation task only")
        if self.max_size is not None and self.max_size <= self.input_size:
            raise ValueError(f"max_size (the cap on the longer side) must be larger than input_size {self.input_size}, "
                             f"got {self.max_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.interpolation == "bilinear_float" and self.task == "classification":
            raise ValueError("interpolation 'bilinear_float' is for resize_mode stretch and letterbox "
                             "(segmentation, detection); "
                             "classification resizes with PIL's 'bilinear' or 'bicubic'")
        if self.resize_mode == "letterbox_center" and self.interpolation != "bilinear":
            raise ValueError(f"resize_mode 'letterbox_center' resizes as ultralytics does (OpenCV's bilinear); "
                             f"interpolation {self.interpolation!r} does not apply: leave it 'bilinear'")
        if self.mask_format not in (None,) + MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {self.mask_format!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must lie between 0 and 1, got {self.mask_threshold!r}")
        if self.detection_format not in formats.names():
            raise ValueError(f"detection_format must be one of {formats.names()}, got {self.detection_format!r}")
        if self.task in DETECTING_TASKS:
            formats.lookup(self.task, self.detection_format)  # this task serves this format
        if self.detection_format not in formats.background_names() and self.background_index is not None:
            raise ValueError(f"background_index applies to detection_formats {formats.background_names()} only; "
                             f"the {self.detection_format!r} format has no background column "
                             "(set background_index: null)")
        if self.quantized not in QUANTIZATIONS:
            raise ValueError(f"quantized must be one of {QUANTIZATIONS} ('' for a float model), got {self.quantized!r}")
        if self.output not in ("logits", "probabilities"):
            raise ValueError(f"output must be 'logits' or 'probabilities', got {self.output!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if self.input_size < 8 or self.top_k < 1 or self.max_detections < 1 or self.max_pixels < 1 \
                or self.max_images < 1 or self.preprocess_threads < 0:
            raise ValueError("input_size >= 8, top_k, max_detections, max_pixels and max_images >= 1 are required")
        slicing.check_settings(self)
        if self.slice_size is not None and (self.task not in DETECTING_TASKS or self.detection_format == "yolov8_obb"):
            raise ValueError(f"slice_size (sliced inference) is for the tasks {DETECTING_TASKS} only, "
                             "and not for oriented boxes (yolov8_obb)")
        if self.spinning not in SPINNING:
            raise ValueError(f"spinning must be one of {SPINNING}, got {self.spinning!r}")
        if self.tile not in TILE_MODES:
            raise ValueError(f"tile must be one of {TILE_MODES}, got {self.tile!r}")
        if self.tile != "never" and self.task != "segmentation":
            raise ValueError("tile is for the segmentation task only (detection: slicing)")
        if not 0.0 <= self.tile_overlap <= MAX_TILE_OVERLAP or self.tile_batch < 1:
            raise ValueError(f"tile_overlap must lie from 0 to {MAX_TILE_OVERLAP} and tile_batch be >= 1, "
                             f"got {self.tile_overlap!r} and {self.tile_batch!r}")
        if self.multi_label and self.task != "classification":
            raise ValueError(f"multi_label is for the classification task only, not {self.task!r}")
        if self.class_thresholds is not None and not self.multi_label:
            raise ValueError("class_thresholds apply with multi_label: true only")
        if self.multi_label and not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold (multi-label: the default threshold) must lie between 0 and 1, "
                             f"got {self.score_threshold!r}")
        if self.embedding_format not in EMBEDDING_FORMATS:
            raise ValueError(f"embedding_format must be one of {EMBEDDING_FORMATS}, got {self.embedding_format!r}")
        if self.decode_draft and self.task != "classification":
            raise ValueError("decode_draft is for the classification task only (the other tasks answer in the "
                             "original image's pixels)")
        if self.streams is not None and self.streams < 1:
            raise ValueError(f"streams must be >= 1 (1: one run at a time, null: the default), got {self.streams!r}")
        if self.micro_batch is not None and self.micro_batch < 0:
            raise ValueError(f"micro_batch must be >= 0 (0: off, null: the task's default), got {self.micro_batch!r}")

    def to_mapping(self) -> dict:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        if self.classes is not None:
            values["classes"] = list(self.classes)
        if self.keypoint_names is not None:
            values["keypoint_names"] = list(self.keypoint_names)
        if self.skeleton is not None:
            values["skeleton"] = [list(pair) for pair in self.skeleton]
        if self.slice_size is not None:
            values["slice_size"] = list(self.slice_size)
        if self.tile_size is not None:
            values["tile_size"] = list(self.tile_size)
        return values


def tile_size(value: Any) -> tuple:
    """A tile size as (width, height) from ``512``, ``"512"``, ``"512x384"`` or ``[512, 384]``; ``ValueError``
    for anything else or a side outside ``MIN_TILE`` .. ``MAX_TILE`` pixels."""
    if isinstance(value, str):
        parts = value.strip().lower().split("x")
        if not 1 <= len(parts) <= 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"a tile size is WIDTH or WIDTHxHEIGHT in pixels (e.g. 512 or 512x384), got {value!r}")
        value = [int(part) for part in parts]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 2 \
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        raise ValueError(f"a tile size is WIDTH or WIDTHxHEIGHT in pixels (e.g. 512 or 512x384), got {value!r}")
    width, height = int(value[0]), int(value[-1])
    if min(width, height) < MIN_TILE or max(width, height) > MAX_TILE:
        raise ValueError(f"a tile side is {MIN_TILE} to {MAX_TILE} pixels, got {width}x{height}")
    return width, height


_SCALARS = {"int": ((numbers.Integral,), "an integer"), "float": ((numbers.Real,), "a number"),
            "bool": ((bool,), "true or false"),
            "str": ((str,), "a string")}


def check_names_and_types(values: Mapping[str, Any]) -> None:
    """Some handler settings, checked alone: unknown names (with the closest known one) and a scalar of
    the wrong type (``input_size: "abc"``), said by name. ``Settings.from_mapping`` does this first."""
    types = {f.name: str(f.type) for f in fields(Settings)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        close = [match for key in unknown for match in difflib.get_close_matches(key, types, n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown handler setting(s) {unknown}{hint}; known: {sorted(types)}")
    for key, value in values.items():
        declared = types[key]
        optional = declared.startswith("Optional[")
        accepted, said = _SCALARS.get(declared[len("Optional["):-1] if optional else declared, (None, ""))
        if accepted is None or (value is None and optional):
            continue
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise ValueError(f"handler setting {key!r} must be {'null or ' if optional else ''}{said}, got {value!r}")


def check_class_thresholds(values: Any) -> dict:
    """A multi-label threshold map: ``{label name or class index: threshold in [0, 1]}`` (keys as text);
    which names exist is checked when the labels are read (``tasks.multi_label``)."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"class_thresholds must be a non-empty map {{label or index: threshold}}, got {values!r}")
    checked = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"class_thresholds[{key!r}] must be a number from 0 to 1, got {value!r}")
        checked[str(key)] = float(value)
    return checked


def load_labels(path: Optional[Path]) -> list:
    """Label names by class index from a JSON list, a JSON {index: name} map, or a text file."""
    if path is None:
        return []
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):
        size = max(int(k) for k in data) + 1 if data else 0
        names = [str(i) for i in range(size)]
        for key, name in data.items():
            names[int(key)] = name[-1] if isinstance(name, list) else str(name)
        return names
    return [str(name) for name in data]


def label_for(labels: list, index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def parse_overrides(pairs: List[str]) -> dict:
    """``key=value`` strings -> settings: the ``--set`` syntax of ``tsvision archive``, ``tsvision export``
    and ``python -m benchmarks.run`` (and ``--model-arg``'s), public for scripts that take the same pairs.

    Each value is read as JSON where it parses (``threads=1`` -> 1, ``classes=[1, 2]`` -> [1, 2],
    ``background_index=null`` -> None, ``agnostic_nms=true`` -> True) and kept as the string
    otherwise (``mask_format=rle`` -> "rle"); a later pair for the same key wins. A pair without ``=``
    raises ``ValueError``. Nothing is validated here: :meth:`Settings.from_mapping` does that."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides

"""Static int8 quantisation of an exported ONNX model (export time only; opt-in).

    tsvision export --task classification --quantize int8 [--calibration-images DIR]

After the fp32 export, ONNX Runtime's static quantisation (``quantize_static``, QDQ format,
int8 weights per output channel, uint8 activations) writes ``model.int8.onnx`` beside
``model.onnx``. Activation ranges are calibrated on images prepared exactly as the serving task
prepares them (the task's own ``prepare`` and ``normalize``, through ``prepare_batch``), so the
ranges match what is served: the user's photos (``--calibration-images``: .jpg/.jpeg/.png
files) or scikit-image's photos. Then both models answer the same photos through the serving
task and the agreement (top-1/top-5, box matching, mask pixels) goes into ``report.json``.

The quantised file says what it is in its ONNX metadata (``tsvision.quantized``);
``tsvision archive`` reads it and records ``quantized: int8`` in the archive's settings.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from tsvision.serving.tasks import load_export
from tsvision.serving.tasks.segmentation import class_mask
from tsvision.tools.export.calibration import calibration_photos

QUANTIZATIONS = ("int8",)
QUANTIZED_FILES = {"int8": "model.int8.onnx"}
METADATA_KEY = "tsvision.quantized"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
QUANTIZABLE_TASKS = ("classification", "segmentation", "detection")
# Operators that make static quantisation of a whole graph a bad idea: data-dependent control flow
# and detection post-processing (boxes through NMS and RoIAlign need float precision, and ORT has no
# int8 kernels for them, so the graph would convert back and forth around them).
REFUSED_OPERATORS = ("NonMaxSuppression", "RoiAlign", "Loop", "If", "Scan")
QUANTIZED_OPERATORS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                       "MatMulInteger")
BOX_IOU = 0.5  # a quantised box matches an fp32 box of the same class at this IoU or more


class QuantizeError(ValueError):
    """Quantisation refused or impossible; the message says why."""


def refusal(task: str, detection_format: str = "ssd") -> Optional[str]:
    """Why ``task`` (with ``detection_format``) cannot be quantised, or None if it can."""
    if task not in QUANTIZABLE_TASKS:
        return (f"task {task} is not quantised: its models are whole torchvision detectors or YOLO heads whose masks "
                f"or keypoints "
                f"were not checked against fp32 here; --quantize supports {', '.join(QUANTIZABLE_TASKS)}")
    if detection_format == "torchvision":
        return ("a whole torchvision detector (detection_format torchvision: Faster R-CNN, RetinaNet, FCOS) cannot be "
                "quantised well: "
                "its graph resizes the image, runs NonMaxSuppression and RoIAlign and has data-dependent shapes "
                "inside, which "
                "ONNX Runtime's int8 kernels do not cover and whose boxes need float precision; "
                "export an SSD-style detector "
                "(boxes/scores contract, e.g. ssdlite320_mobilenet_v3_large) to quantise detection")
    if detection_format == "yolo_nms":
        return ("a detector exported with NMS inside (detection_format yolo_nms) cannot be quantised well; "
                "export it without NMS (yolov8)")
    return None


def graph_refusal(model: Path) -> Optional[str]:
    """Why the ONNX graph itself cannot be quantised well (operators that need float boxes, control flow)."""
    graph = onnx.load(str(model), load_external_data=False).graph
    found = sorted({node.op_type for node in graph.node if node.op_type in REFUSED_OPERATORS})
    if found:
        return (f"{model} contains {', '.join(found)}: post-processing or control flow inside the graph cannot be "
                f"quantised well "
                "(no int8 kernels; boxes need float precision); export the network without it")
    if len(graph.input) != 1:
        return f"{model} has {len(graph.input)} inputs; the serving tasks feed one N×3×H×W image batch"
    return None


def model_quantization(model: Path) -> str:
    """What quantisation an ONNX file carries: its ``tsvision.quantized`` metadata, else "int8" when it
    has quantised operators (a file quantised by another tool), else "" (float)."""
    if Path(model).suffix.lower() != ".onnx":
        return ""
    return proto_quantization(onnx.load(str(model), load_external_data=False))


def proto_quantization(proto: Any) -> str:
    """``model_quantization`` of an ONNX ``ModelProto`` already loaded."""
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return entry.value
    return "int8" if any(node.op_type in QUANTIZED_OPERATORS for node in proto.graph.node) else ""


# -- calibration images ----------------------------------------------------------------------------
def calibration_items(folder: Optional[Path]) -> Tuple[List[Tuple[str, Any]], str]:
    """(name, image) pairs and what they are: the .jpg/.jpeg/.png files of ``folder`` as bytes (decoded
    by the serving task exactly as a request's body), or scikit-image's photos when ``folder`` is None."""
    if folder is None:
        return calibration_photos()
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizeError(f"--calibration-images {folder}: not a folder")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sum(1 for f in folder.iterdir())
        raise QuantizeError(f"--calibration-images {folder}: no {'/'.join(IMAGE_SUFFIXES)} files in it"
                            f"{f' ({others} other entries)' if others else ' (it is empty)'}; "
                            "give photos like the ones you will serve")
    return [(f.name, f.read_bytes()) for f in files], f"{len(files)} images from {folder}"


def prepared_inputs(task, items: Sequence[Tuple[str, Any]]) -> Union[np.ndarray, List[np.ndarray]]:
    """The model inputs of ``items`` as the serving task makes them (decode, ``prepare``, ``normalize``);
    an image the server could not read is an error naming the file."""
    batch = task.prepared(task.prepare_batch([image for _, image in items]))  # pipelined (micro_batch): wait for it
    bad = [(name, result) for (name, _), result in zip(items, batch.results) if result is not None]
    if bad:
        details = "; ".join(f"{name}: {getattr(error, 'message', error)}" for name, error in bad[:3])
        raise QuantizeError(f"{len(bad)} of {len(items)} calibration images cannot be read: {details}")
    if batch.inputs is None:
        raise QuantizeError("no calibration image could be prepared")
    return batch.inputs


class _Reader:
    """onnxruntime's CalibrationDataReader: one image per call."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self._feeds = iter([{name: np.ascontiguousarray(inputs[i])[None]} for i in range(len(inputs))])  # array or list

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - not called by MinMax calibration
        pass


# -- quantisation -------------------------------------------------------------------------------------
def pooled_branches(model: Path) -> List[str]:
    """The nodes of squeeze-and-excitation style branches: from a global pooling (ReduceMean,
    GlobalAveragePool, AveragePool) along single-consumer nodes up to the Mul that scales the feature
    map. They run on 1×1 (or tiny) tensors, so int8 saves nothing there, and their gates (sigmoid of a
    quantised logit) carry the largest errors: keeping them float shrinks the worst top-1 score
    difference on MobileNetV3-Small (measured in docs/quantization.md)."""
    graph = onnx.load(str(model), load_external_data=False).graph
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: List[str] = []
    for node in graph.node:
        if node.op_type not in ("ReduceMean", "GlobalAveragePool", "AveragePool"):
            continue
        current, chain = node, [node.name]
        while len(chain) < 16:
            following = consumers.get(current.output[0], [])
            if len(following) != 1 or following[0].op_type == "Mul":
                break
            current = following[0]
            chain.append(current.name)
        names += chain
    return names


WEIGHTED_OPERATORS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def decoder_tail(model: Path) -> List[str]:
    """The nodes after the last weighted layer (no Conv/Gemm/MatMul downstream of them): a detector's
    box decoding and softmax, a segmenter's final resize. They stay float, so the outputs keep float
    resolution (quantised to uint8, SSDlite's boxes would move in steps of 1.25 input pixels and its
    scores in steps of 1/255 around a 0.03 threshold) at little cost: they are a few cheap ops."""
    graph = onnx.load(str(model), load_external_data=False).graph
    producers = {output: node for node in graph.node for output in node.output}
    upstream, stack = set(), [node for node in graph.node if node.op_type in WEIGHTED_OPERATORS]
    while stack:
        node = stack.pop()
        if id(node) in upstream:
            continue
        upstream.add(id(node))
        stack.extend(producers[name] for name in node.input if name in producers)
    return [node.name for node in graph.node if id(node) not in upstream]


def quantize_onnx(source: Path, target: Path, inputs: Union[np.ndarray, List[np.ndarray]], per_channel: bool = True,
                  reduce_range: bool = True, metadata: Optional[Dict[str, str]] = None) -> None:
    """``quantize_static`` of ``source`` into ``target`` (QDQ, int8 weights, uint8 activations, MinMax
    ranges over ``inputs`` fed one image at a time), after ``quant_pre_process`` (shape inference and
    ONNX Runtime's graph optimisations, e.g. folded BatchNorm, so the quantised nodes are the ones run).

    ``reduce_range`` (7-bit weights) avoids the saturation of ONNX Runtime's uint8×int8 kernels on
    x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), at a small cost on CPUs with it; the
    squeeze-and-excitation branches (``pooled_branches``) and the decoding after the last weighted layer
    (``decoder_tail``) stay float."""
    # onnxruntime's quantisation (heavy, only for --quantize)
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="tsvision-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation: quantise the graph as exported
            prepared = source
        quantize_static(str(prepared), str(target), _Reader(name, inputs), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=pooled_branches(prepared) + decoder_tail(prepared),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    proto = onnx.load(str(target))
    for key, value in {METADATA_KEY: "int8", **(metadata or {})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))


def quantize_export(out_dir: Path, calibration: Optional[Path] = None, quantization: str = "int8",
                    per_channel: bool = True, reduce_range: bool = True) -> dict:
    """Quantise ``out_dir/model.onnx`` (an export folder with ``settings.json``) into
    ``out_dir/model.int8.onnx``, compare both on the calibration photos through the serving task,
    add a ``quantized`` record to ``report.json`` and return it."""
    if quantization not in QUANTIZATIONS:
        raise QuantizeError(f"--quantize {quantization}: supported {', '.join(QUANTIZATIONS)}")
    out_dir = Path(out_dir)
    source, target = out_dir / "model.onnx", out_dir / QUANTIZED_FILES[quantization]
    settings = json.loads((out_dir / "settings.json").read_text())
    reason = refusal(settings["task"], settings.get("detection_format", "ssd"))
    if reason is None and source.exists():
        reason = graph_refusal(source)
    if reason:
        raise QuantizeError(reason)
    if not source.exists():
        raise QuantizeError(f"{source} is missing: quantisation starts from the fp32 ONNX export")
    items, described = calibration_items(calibration)
    fp32 = load_export(out_dir, source.name)
    try:
        inputs = prepared_inputs(fp32, items)
        quantize_onnx(source, target, inputs, per_channel, reduce_range,
                      {"tsvision.calibration": f"{described} ({len(items)})"})
        int8 = load_export(out_dir, target.name)
        try:
            agreement = compare_answers(fp32, int8, [image for _, image in items], settings["task"])
            agreement["output_sqnr_db"] = output_sqnr(run_outputs(fp32.runtime, inputs),
                                                      run_outputs(int8.runtime, inputs),
                                                      _output_names(source))
        finally:
            int8.close()
    finally:
        fp32.close()
    record = {
        "format": quantization, "file": target.name, "method": "onnxruntime quantize_static, QDQ, MinMax calibration",
        "weights": (("int8 per channel" if per_channel else "int8 per tensor")
                    + (", 7-bit range" if reduce_range else "")),
        "activations": "uint8 asymmetric",
        "reduce_range": reduce_range, "calibration": described, "calibration_images": [name for name, _ in items],
        "agreement_photos": "the calibration images", "size_bytes": target.stat().st_size,
        "fp32_size_bytes": source.stat().st_size, "agreement": agreement,
    }
    report_path = out_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["quantized"] = record
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return record


# -- agreement ------------------------------------------------------------------------------------------
def compare_answers(fp32, int8, images: Sequence[Any], task: str) -> dict:
    """The two tasks' answers on the same images, compared as the task's answers are used."""
    first, second = fp32.run(list(images)), int8.run(list(images))
    return AGREEMENT[task](first, second)


def _output_names(model: Path) -> List[str]:
    return [output.name for output in onnx.load(str(model), load_external_data=False).graph.output]


def run_outputs(runtime, inputs: Union[np.ndarray, List[np.ndarray]]) -> List[np.ndarray]:
    """``runtime``'s outputs on the prepared ``inputs``: one pass over a stacked array, or for a list
    (images of different shapes: segmentation's ``shorter_side``) one pass per image, each output flattened and
    joined."""
    if not isinstance(inputs, list):
        return runtime.run(inputs)
    runs = [runtime.run(image[None]) for image in inputs]
    return [np.concatenate([run[k].reshape(-1) for run in runs]) for k in range(len(runs[0]))]


def output_sqnr(first: List[np.ndarray], second: List[np.ndarray], names: Sequence[str]) -> Dict[str, float]:
    """Signal-to-quantisation-noise ratio of each raw model output, in dB (higher is closer; 20 dB: the
    error's energy is 1% of the output's)."""
    ratios = {}
    for name, a, b in zip(names, first, second):
        a, b = a.astype(np.float64), b.astype(np.float64)
        noise = float(((a - b) ** 2).sum())
        ratios[name] = round(float(10 * np.log10(float((a ** 2).sum()) / noise)), 2) if noise > 0 else float("inf")
    return ratios


def classification_agreement(first: List[list], second: List[list]) -> dict:
    top1 = [a[0]["index"] == b[0]["index"] for a, b in zip(first, second)]
    k = min(len(first[0]), len(second[0]))
    overlap = [len({d["index"] for d in a[:k]} & {d["index"] for d in b[:k]}) for a, b in zip(first, second)]
    score_diff = [abs(a[0]["score"] - next((d["score"] for d in b if d["index"] == a[0]["index"]), 0.0)) for a,
                  b in zip(first, second)]
    return {"images": len(first), "top1_equal": int(sum(top1)), "top1_agreement": round(sum(top1) / len(top1), 4),
            "top_k": k, "topk_overlap_mean": round(float(np.mean(overlap)) / k, 4), "topk_overlap_min": min(overlap),
            "top1_score_abs_diff_max": round(float(max(score_diff)), 5)}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(first: list, second: list, threshold: float = BOX_IOU) -> List[float]:
    """Greedy one-to-one matching, fp32 boxes in score order, same class, IoU >= ``threshold``: the IoUs matched."""
    taken, ious = set(), []
    for a in first:
        best, best_iou = None, threshold
        for j, b in enumerate(second):
            if j in taken or b["index"] != a["index"]:
                continue
            iou = box_iou(a["box"], b["box"])
            if iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            taken.add(best)
            ious.append(best_iou)
    return ious


def detection_agreement(first: List[list], second: List[list]) -> dict:
    counts_fp32 = [len(a) for a in first]
    counts_int8 = [len(b) for b in second]
    matched = [match_detections(a, b) for a, b in zip(first, second)]
    total_matched = sum(len(m) for m in matched)
    ious = [iou for m in matched for iou in m]
    return {"images": len(first), "iou_threshold": BOX_IOU, "boxes_fp32": sum(counts_fp32),
            "boxes_int8": sum(counts_int8),
            "matched": total_matched,
            "recall": round(total_matched / sum(counts_fp32), 4) if sum(counts_fp32) else None,
            "precision": round(total_matched / sum(counts_int8), 4) if sum(counts_int8) else None,
            "matched_iou_mean": round(float(np.mean(ious)), 4) if ious else None,
            "top1_same": int(sum(1 for a, b in zip(first, second) if a and b and a[0]["index"] == b[0]["index"]
                                 and box_iou(a[0]["box"], b[0]["box"]) >= BOX_IOU)),
            "counts_fp32": counts_fp32, "counts_int8": counts_int8}


def segmentation_agreement(first: List[dict], second: List[dict]) -> dict:
    fractions = [float(np.mean(class_mask(a) == class_mask(b))) for a, b in zip(first, second)]
    return {"images": len(first), "pixel_agreement_mean": round(float(np.mean(fractions)), 5),
            "pixel_agreement_min": round(min(fractions), 5)}


AGREEMENT = {"classification": classification_agreement, "detection": detection_agreement,
             "segmentation": segmentation_agreement}


def describe_agreement(task: str, agreement: dict) -> str:
    """One line for people."""
    a = agreement
    if task == "classification":
        return (f"top-1 equal on {a['top1_equal']}/{a['images']} images, top-{a['top_k']} overlap "
                f"{a['topk_overlap_mean']:.0%} "
                f"on average (least {a['topk_overlap_min']}/{a['top_k']}), "
                f"top-1 score differs by at most {a['top1_score_abs_diff_max']:.4f}")
    if task == "detection":
        return (f"{a['boxes_fp32']} fp32 boxes, {a['boxes_int8']} int8 boxes on {a['images']} images; {a['matched']} "
                f"matched "
                f"(same class, IoU >= {a['iou_threshold']}): recall {a['recall']}, precision {a['precision']}, "
                f"mean IoU of matches {a['matched_iou_mean']}; same top box on {a['top1_same']}/{a['images']}")
    return (f"mask pixels equal {a['pixel_agreement_mean']:.2%} on average over {a['images']} images "
            f"(least {a['pixel_agreement_min']:.2%})")

"""Whole torchvision detectors (Faster R-CNN, RetinaNet, FCOS) for ``detection_format: torchvision``
(export time only).

The exported model is torchvision's own detector: a list of 3×H×W float images in [0, 1] of
any size in; it resizes and normalises inside, runs its own NMS and returns per image ``boxes``
(x1, y1, x2, y2 in original pixels), ``labels`` (0 = background) and ``scores``.

- ``model.pt``: ``torch.jit.script`` of the detector (it returns ``(losses, detections)``).
- ``model.onnx``: ``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``: the
  path torchvision itself tests) of the detector on ONE image, height and width dynamic; one
  image per call. If ONNX export fails for an architecture on this torch, only ``model.pt`` is
  written and the report says why.

Random weights are conditioned so that their answers are stable and comparable
(``condition_random_detector``); that teaches the model nothing.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from tsvision.tools.calibration import calibration_images, recompute_batchnorm, smooth_image

# Random weights: one class (COCO's "person") is made to stand out; its scores then spread over
# (0, 1) and this threshold keeps a handful of boxes per photo.
RANDOM_WEIGHTS_CLASS = 1
RANDOM_WEIGHTS_SCORE_THRESHOLD = 0.15
LOGIT_SPREAD = 3.0  # standard deviation of the conditioned class logit
CALIBRATION_KEEP = 8  # candidates (proposals or anchors) above the threshold in the most responsive calibration image
DETECTION_OUTPUTS = ("boxes", "labels", "scores")  # Mask R-CNN adds "masks" (tools/instance_segmenters.py)


def is_torchvision_detector(model: nn.Module) -> bool:
    """Faster R-CNN, RetinaNet or FCOS: a GeneralizedRCNNTransform-based detector that is not an SSD
    (SSDs export to the boxes/scores contract instead) and returns boxes, labels and scores only."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and (getattr(roi_heads, "mask_predictor", None) is not None
                                  or getattr(roi_heads, "keypoint_predictor", None) is not None):
        return False  # Mask/Keypoint R-CNN return masks/keypoints too: not this format (yet)
    return hasattr(model, "transform") and not _is_ssd(model) and _classification_layer(model)[0] is not None


def _is_ssd(model: nn.Module) -> bool:
    from torchvision.models.detection.ssd import SSD

    return isinstance(model, SSD)


def _classification_layer(model: nn.Module) -> Tuple[Optional[nn.Module], str]:
    """The last layer of the class scores and how scores come from it: ``softmax`` (Faster R-CNN,
    a Linear per proposal) or ``sigmoid`` (RetinaNet/FCOS, a conv whose channels are anchor x class)."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads.box_predictor, "cls_score"):
        return roi_heads.box_predictor.cls_score, "softmax"
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if head is not None and isinstance(getattr(head, "cls_logits", None), nn.Conv2d):
        return head.cls_logits, "sigmoid"
    return None, ""


def build_torchvision_detector(model: nn.Module, architecture: str, random_weights: bool, seed: int) -> Tuple[nn.Module, dict]:
    """``model`` (eval mode) and its handler settings; random weights are conditioned first."""
    transform = model.transform
    min_size = int(transform.min_size[-1])
    settings = {"detection_format": "torchvision", "input_size": min_size, "background_index": 0,
                "mean": list(transform.image_mean), "std": list(transform.image_std)}
    if random_weights:
        condition_random_detector(model, seed)
        settings["score_threshold"] = RANDOM_WEIGHTS_SCORE_THRESHOLD
    return model.eval(), settings


def parity_image_size(model: nn.Module) -> Tuple[int, int]:
    """An image size the model does not resize (min_size × 1.5 min_size, within max_size): there
    the scripted and the eager transform agree exactly (elsewhere they round differently)."""
    short = int(model.transform.min_size[-1])
    long = min(int(model.transform.max_size), short * 3 // 2)
    return short, long


def condition_random_detector(model: nn.Module, seed: int) -> None:
    """Make a randomly initialised detector's answers well separated (it still knows nothing):

    1. BatchNorm statistics of the backbone are recomputed on seeded noise (random weights
       otherwise shrink activations layer by layer), as the SSD export does.
    2. The logit of one class (``RANDOM_WEIGHTS_CLASS``) in the classification head is rescaled
       to standard deviation ``LOGIT_SPREAD`` over the proposals/anchors of the calibration
       images (``tools/calibration.py``: scikit-image's photos where installed) and shifted: its
       weight scaled, its bias raised. Its scores then range over (0, 1) instead of sitting near
       1/C, so thresholds and rankings are not decided by rounding. The other classes' weights
       are zeroed, so only that class is ever returned (their logits are their biases: near 0
       against a softmax, the 0.01 prior of a sigmoid head). The bias is chosen so that the most
       responsive calibration image has ``CALIBRATION_KEEP`` candidates above
       ``RANDOM_WEIGHTS_SCORE_THRESHOLD`` (random networks respond very unevenly to different
       photos; dense heads such as RetinaNet's have 100 000s of anchors, Faster R-CNN a few hundred
       proposals).
    """
    height, width = parity_image_size(model)
    recompute_batchnorm(model.backbone, seed, (2, 3, height, width), steps=3)
    model.eval()
    layer, kind = _classification_layer(model)
    if layer is None:
        return
    num_classes = layer.out_features if isinstance(layer, nn.Linear) else model.head.classification_head.num_classes
    channels = list(range(RANDOM_WEIGHTS_CLASS, layer.weight.shape[0], num_classes))
    seen: List[torch.Tensor] = []

    def record(_module, _inputs, output):
        values = output[:, channels] if output.dim() == 2 else output[:, channels].flatten()
        seen.append(values.detach().flatten())

    per_image: List[torch.Tensor] = []
    handle = layer.register_forward_hook(record)
    try:
        with torch.no_grad():
            for image in calibration_images(seed)[0]:
                seen.clear()
                model([image])
                per_image.append(torch.cat(seen))
    finally:
        handle.remove()
    values = torch.cat(per_image)
    mean, std = float(values.mean()), float(values.std()) or 1.0
    # The logit that scores exactly the threshold: sigmoid, or softmax against C - 1 near-zero logits.
    t = RANDOM_WEIGHTS_SCORE_THRESHOLD
    at_threshold = float(np.log(t / (1 - t)) + (np.log(num_classes - 1) if kind == "softmax" else 0.0))
    kth = max(float(torch.topk((image - mean) * LOGIT_SPREAD / std, min(CALIBRATION_KEEP, image.numel())).values[-1])
              for image in per_image)
    offset = at_threshold - kth
    with torch.no_grad():
        # The other classes get constant logits (their bias): in a softmax head never above 1/C, in a
        # sigmoid head at its prior (0.01), below the model's own score threshold.
        keep = set(channels) | ({0} if kind == "softmax" else set())
        others = [c for c in range(layer.weight.shape[0]) if c not in keep]
        layer.weight[others] = 0.0
        for channel in channels:
            layer.weight[channel] *= LOGIT_SPREAD / std
            layer.bias[channel] = (layer.bias[channel] - mean) * LOGIT_SPREAD / std + offset


def load_detector_checkpoint(model: nn.Module, path: Path) -> None:
    """Strict load, except for BatchNorm's ``num_batches_tracked`` counters: a detector trained from
    pretrained backbones uses FrozenBatchNorm2d, whose state has none (here the backbone is built
    with BatchNorm2d, the same in eval mode)."""
    from tsvision.tools.architectures import read_state_dict

    missing, unexpected = model.load_state_dict(read_state_dict(path), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this architecture: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


# -- export ----------------------------------------------------------------------------------
def export_torchvision_files(exportable, out_dir: Path, tolerance: float = 1e-3) -> dict:
    """Write ``model.pt`` (scripted) and ``model.onnx`` (one image, dynamic H/W) for a whole detector,
    reload both, compare them with the eager model on a test image, and write ``report.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = exportable.module.eval()
    outputs = tuple(exportable.output_names or DETECTION_OUTPUTS)
    ts_path, onnx_path = out_dir / "model.pt", out_dir / "model.onnx"
    timings = {}
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(ts_path))
    timings["torchscript_seconds"] = round(time.time() - started, 1)
    height, width = parity_image_size(model)
    onnx_error = None
    started = time.time()
    try:
        export_detector_onnx(model, onnx_path, height, width, outputs)
    except Exception as error:  # noqa: BLE001 - reported, TorchScript stays usable
        onnx_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        onnx_path.unlink(missing_ok=True)
    timings["onnx_seconds"] = round(time.time() - started, 1)
    threshold = float(exportable.settings.get("score_threshold", 0.5))
    image, compared = parity_image(model, height, width, threshold)
    parity = compare_detector_backends(model, ts_path, None if onnx_error else onnx_path, image, threshold, outputs)
    report = {
        "task": exportable.task,
        "architecture": exportable.architecture,
        "detection_format": "torchvision",
        "random_weights": exportable.random_weights,
        "input": "list of 3xHxW float images in [0, 1], any size (ONNX: one 3xHxW image per call)",
        "outputs": list(outputs),
        "files": ["model.pt"] + ([] if onnx_error else ["model.onnx"]),
        "onnx_error": onnx_error,
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_image": count_detector_flops(model, height, width),
        "parity_image": [height, width],
        "parity_detections": compared,
        "max_abs_diff": parity,
        **timings,
        "tolerance": tolerance,
        "ok": all(v <= tolerance for v in parity.values()),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parity_image(model: nn.Module, height: int, width: int, threshold: float) -> Tuple[torch.Tensor, int]:
    """The first calibration image, resized to ``height`` × ``width`` (a size the model does not
    resize), on which the eager model finds something above ``threshold``; and how many it finds."""
    image, found = None, 0
    for photo in calibration_images(0)[0]:
        image = torch.nn.functional.interpolate(photo[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        with torch.no_grad():
            found = int((model([image])[0]["scores"] > threshold).sum())
        if found:
            break
    return image, found


class OneImageDetections(nn.Module):
    """The detector on one image, returning ``outputs`` (default ``boxes``, ``labels``, ``scores``) in
    that order (the ONNX exporter names outputs by position, and RetinaNet/FCOS put ``scores`` before
    ``labels``)."""

    def __init__(self, model: nn.Module, outputs: Tuple[str, ...] = DETECTION_OUTPUTS) -> None:
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)

    def forward(self, images: List[torch.Tensor]):
        found = self.model(images)[0]
        return tuple(found[name] for name in self.outputs)


def export_detector_onnx(model: nn.Module, path: Path, height: int, width: int,
                         outputs: Tuple[str, ...] = DETECTION_OUTPUTS) -> None:
    import onnx

    sample = smooth_image(height, width, seed=3)
    dynamic = {name: ([0, 2, 3] if name == "masks" else [0]) for name in outputs}  # masks K×1×H×W
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OneImageDetections(model, outputs).eval(), ([sample],), str(path), opset_version=17, dynamo=False,
            input_names=["images"], output_names=list(outputs), dynamic_axes={"images": [1, 2], **dynamic},
        )
    onnx.checker.check_model(str(path), full_check=True)


def detections_of(outputs: List[np.ndarray], threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``boxes``, ``labels``, ``scores`` above ``threshold``, best first."""
    boxes, labels, scores = (np.asarray(o) for o in outputs)
    keep = scores > threshold
    order = np.argsort(-scores[keep], kind="stable")
    return boxes[keep][order], labels[keep][order], scores[keep][order]


def detection_difference(a, b, threshold: float, side: float) -> float:
    """Largest difference between two answers above ``threshold`` matched in order: box edges as a
    fraction of ``side`` (the image's longer side), or scores; inf when their lengths or labels differ."""
    (boxes_a, labels_a, scores_a), (boxes_b, labels_b, scores_b) = detections_of(a, threshold), detections_of(b, threshold)
    if len(labels_a) != len(labels_b) or not np.array_equal(labels_a, labels_b):
        return float("inf")
    if not len(labels_a):
        return 0.0
    return float(max(np.abs(boxes_a - boxes_b).max() / side, np.abs(scores_a - scores_b).max()))


def compare_detector_backends(model: nn.Module, ts_path: Path, onnx_path: Optional[Path], image: torch.Tensor,
                              threshold: float, outputs: Tuple[str, ...] = DETECTION_OUTPUTS) -> Dict[str, float]:
    """Largest box (as a fraction of the image's longer side) or score difference of the detections
    above ``threshold`` between eager, TorchScript and ONNX Runtime on one image that the models do
    not resize; with ``masks`` among the ``outputs``, also the fraction of mask pixels that differ."""
    side = float(max(image.shape[1:]))
    from tsvision.serving.runtimes import load_runtime

    with torch.no_grad():
        found = model([image])[0]
    answers = {"eager": {k: found[k].numpy() for k in outputs}}
    array = image.numpy()
    # TorchScript's outputs come in key order sorted by name, ONNX's in the exported order
    answers["torchscript"] = dict(zip(sorted(outputs), load_runtime(ts_path).run_images([array])[0]))
    pairs = [("torchscript", "eager")]
    if onnx_path is not None:
        answers["onnx"] = dict(zip(outputs, load_runtime(onnx_path).run_images([array])[0]))
        pairs += [("onnx", "eager"), ("onnx", "torchscript")]
    diffs = {}
    for a, b in pairs:
        diffs[f"{a}_vs_{b}"] = detection_difference([answers[a][k] for k in DETECTION_OUTPUTS],
                                                    [answers[b][k] for k in DETECTION_OUTPUTS], threshold, side)
    if "masks" in outputs:
        from tsvision.tools.instance_segmenters import mask_disagreement

        for a, b in pairs:
            diffs[f"masks_{a}_vs_{b}"] = mask_disagreement(answers[a], answers[b], threshold)
    return diffs


def count_detector_flops(model: nn.Module, height: int, width: int) -> Optional[int]:
    """FLOPs of one image of ``height`` × ``width`` (the convolutions and matrix products torch counts);
    None if counting fails."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model([torch.zeros(3, height, width)])
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - FLOPs are informative only
        return None

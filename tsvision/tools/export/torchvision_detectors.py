"""Whole torchvision detectors (Faster R-CNN, RetinaNet, FCOS, Keypoint R-CNN) for
``detection_format: torchvision`` (export time only).

The exported model is torchvision's own detector: a list of 3×H×W float images in [0, 1] of
any size in; it resizes and normalises inside, runs its own NMS and returns per image ``boxes``
(x1, y1, x2, y2 in original pixels), ``labels`` (0 = background) and ``scores``; Keypoint
R-CNN adds ``keypoints`` (N×K×3) and ``keypoints_scores`` (N×K) (``output_keys``).

- ``model.pt``: ``torch.jit.script`` of the detector (it returns ``(losses, detections)``).
- ``model.onnx``: ``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``: the
  path torchvision itself tests) of the detector on ONE image, height and width dynamic; one
  image per call. Bicubic ``Resize`` nodes (Keypoint R-CNN's keypoint decoding) are rewritten as
  two matrix products (``tools/export/onnx_cubic.py``): ONNX Runtime's cubic kernel is slow. If ONNX export
  fails for an architecture on this torch, only ``model.pt`` is written and the report says why.

Random weights are conditioned so that their answers are stable and comparable
(``condition_random_detector``); that teaches the model nothing.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNN, KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.ssd import SSD
from torchvision.models.mobilenetv3 import mobilenet_v3_large

from tsvision.serving.runtimes import load_runtime
from tsvision.serving.tasks.keypoints import named_keypoints
from tsvision.tools.export.calibration import (
    CONDITIONED_CLASS,
    CONDITIONED_SCORE_THRESHOLD,
    LOGIT_SPREAD,
    calibration_images,
    recompute_batchnorm,
    smooth_image,
)
from tsvision.tools.export.checkpoints import read_state_dict
from tsvision.tools.export.exportable import write_report
from tsvision.tools.export.onnx_cubic import rewrite_cubic_resizes

CALIBRATION_KEEP = 8  # candidates (proposals or anchors) above the threshold in the most responsive calibration image
DETECTION_OUTPUTS = ("boxes", "labels", "scores")  # Mask R-CNN adds "masks" (export/mask_rcnn.py)


def is_torchvision_detector(model: nn.Module) -> bool:
    """Faster R-CNN, RetinaNet, FCOS or Keypoint R-CNN: a GeneralizedRCNNTransform-based detector
    that is not an SSD (SSDs export to the boxes/scores contract instead)."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and getattr(roi_heads, "mask_predictor", None) is not None:
        return False  # Mask R-CNN returns masks too: not this format (yet)
    return hasattr(model, "transform") and not _is_ssd(model) and _classification_layer(model)[0] is not None


def keypoint_count(model: nn.Module) -> int:
    """Keypoints per person of a Keypoint R-CNN; 0 for other detectors."""
    predictor = getattr(getattr(model, "roi_heads", None), "keypoint_predictor", None)
    return int(predictor.kps_score_lowres.out_channels) if predictor is not None else 0


def output_keys(model: nn.Module) -> Tuple[str, ...]:
    """What the detector returns per image, in the order the ONNX export writes it: Keypoint R-CNN
    adds ``keypoints`` and ``keypoints_scores``, Mask R-CNN ``masks``."""
    has_masks = getattr(getattr(model, "roi_heads", None), "mask_predictor", None) is not None
    return (DETECTION_OUTPUTS + (("keypoints", "keypoints_scores") if keypoint_count(model) else ())
            + (("masks",) if has_masks else ()))


# tsvision's own detector architectures (not in torchvision's registry): name -> (builder, class names)
PERSON_LABELS = ["no person", "person"]  # torchvision's Keypoint R-CNN categories


def keypointrcnn_mobilenet_v3_large_320_fpn(num_classes: int = 2, num_keypoints: int = 17, **kwargs) -> nn.Module:
    """The smallest Keypoint R-CNN here (random weights; no pretrained backbone is loaded):
    ``fasterrcnn_mobilenet_v3_large_320_fpn``'s MobileNetV3-Large FPN backbone, anchors and
    320-pixel transform, with Keypoint R-CNN's box and keypoint heads, the keypoint head cut from
    8 convolutions of 512 channels to 4 of 128 (tsvision's choice, for 2-core machines).
    ``kwargs`` go to ``KeypointRCNN`` (``--model-arg``), over these defaults."""
    backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d), True, 6)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    channels = (128,) * 4
    options = {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150,
               "rpn_score_thresh": 0.05, **kwargs}
    return KeypointRCNN(
        backbone, num_classes, rpn_anchor_generator=AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * 3),
        keypoint_head=KeypointRCNNHeads(backbone.out_channels, channels),
        keypoint_predictor=KeypointRCNNPredictor(channels[-1], num_keypoints), **options)


OWN_ARCHITECTURES = {"keypointrcnn_mobilenet_v3_large_320_fpn": (keypointrcnn_mobilenet_v3_large_320_fpn,
                                                                 PERSON_LABELS)}


def _is_ssd(model: nn.Module) -> bool:
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


def build_torchvision_detector(model: nn.Module, architecture: str, random_weights: bool,
                               seed: int) -> Tuple[nn.Module, dict]:
    """``model`` (eval mode) and its handler settings; random weights are conditioned first."""
    transform = model.transform
    min_size = int(transform.min_size[-1])
    settings = {"detection_format": "torchvision", "input_size": min_size, "background_index": 0,
                "mean": list(transform.image_mean), "std": list(transform.image_std)}
    if keypoint_count(model):
        settings.update(named_keypoints(keypoint_count(model)))
    if random_weights:
        condition_random_detector(model, seed, keypoint_calibration_photos() if keypoint_count(model) else None)
        settings["score_threshold"] = CONDITIONED_SCORE_THRESHOLD
        if keypoint_count(model):  # keypoints only for the boxes an answer keeps (each costs a head pass)
            model.roi_heads.score_thresh = CONDITIONED_SCORE_THRESHOLD
    return model.eval(), settings


def parity_image_size(model: nn.Module) -> Tuple[int, int]:
    """An image size the model does not resize (min_size × 1.5 min_size, within max_size): there
    the scripted and the eager transform agree exactly (elsewhere they round differently)."""
    short = int(model.transform.min_size[-1])
    long = min(int(model.transform.max_size), short * 3 // 2)
    return short, long


KEYPOINT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")


def keypoint_calibration_photos() -> Optional[List[torch.Tensor]]:
    """``KEYPOINT_PHOTOS`` as 3×H×W tensors in [0, 1] (None without scikit-image), for Keypoint R-CNN:
    conditioned like the detectors on ``calibration_images`` (most responsive image), the random
    seed-0 model found persons only on hubble_deep_field (32, scores near 1.0, keypoints from flat
    heatmaps whose ONNX and TorchScript argmax lie up to 94 px apart) and none on the other photos."""
    try:
        import skimage.data  # optional: scikit-image (the test and examples extras)
    except ImportError:
        return None
    arrays = [np.asarray(getattr(skimage.data, name)()) for name in KEYPOINT_PHOTOS]
    arrays = [np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3] for a in arrays]
    return [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float() / 255 for a in arrays]


def condition_random_detector(model: nn.Module, seed: int, photos: Optional[List[torch.Tensor]] = None) -> None:
    """Make a randomly initialised detector's answers well separated (it still knows nothing):

    1. BatchNorm statistics of the backbone are recomputed on seeded noise (random weights
       otherwise shrink activations layer by layer), as the SSD export does.
    2. The logit of one class (``CONDITIONED_CLASS``) in the classification head is rescaled
       to standard deviation ``LOGIT_SPREAD`` over the proposals/anchors of the calibration
       images (``tools/export/calibration.py``: scikit-image's photos where installed) and shifted: its
       weight scaled, its bias raised. Its scores then range over (0, 1) instead of sitting near
       1/C, so thresholds and rankings are not decided by rounding. The other classes' weights
       are zeroed, so only that class is ever returned (their logits are their biases: near 0
       against a softmax, the 0.01 prior of a sigmoid head). The bias is chosen so that the most
       responsive calibration image has ``CALIBRATION_KEEP`` candidates above
       ``CONDITIONED_SCORE_THRESHOLD`` (random networks respond very unevenly to different
       photos; dense heads such as RetinaNet's have 100 000s of anchors, Faster R-CNN a few hundred
       proposals). Given ``photos`` (Keypoint R-CNN), they are the calibration images instead and
       the threshold is pooled: ``CALIBRATION_KEEP`` candidates per two photos, over all of them.
    """
    height, width = parity_image_size(model)
    recompute_batchnorm(model.backbone, seed, (2, 3, height, width), steps=3)
    model.eval()
    layer, kind = _classification_layer(model)
    if layer is None:
        return
    num_classes = layer.out_features if isinstance(layer, nn.Linear) else model.head.classification_head.num_classes
    channels = list(range(CONDITIONED_CLASS, layer.weight.shape[0], num_classes))
    seen: List[torch.Tensor] = []

    def record(_module, _inputs, output):
        values = output[:, channels] if output.dim() == 2 else output[:, channels].flatten()
        seen.append(values.detach().flatten())

    per_image: List[torch.Tensor] = []
    handle = layer.register_forward_hook(record)
    try:
        with torch.no_grad():
            for image in photos or calibration_images(seed)[0]:
                seen.clear()
                model([image])
                per_image.append(torch.cat(seen))
    finally:
        handle.remove()
    values = torch.cat(per_image)
    mean, std = float(values.mean()), float(values.std()) or 1.0
    # The logit that scores exactly the threshold: sigmoid, or softmax against C - 1 near-zero logits.
    t = CONDITIONED_SCORE_THRESHOLD
    at_threshold = float(np.log(t / (1 - t)) + (np.log(num_classes - 1) if kind == "softmax" else 0.0))
    if photos:  # pooled over the photos
        kth = float(torch.topk((values - mean) * LOGIT_SPREAD / std,
                               min(CALIBRATION_KEEP * max(1, len(photos) // 2), values.numel())).values[-1])
    else:
        kth = max(float(torch.topk((image - mean) * LOGIT_SPREAD / std,
                                   min(CALIBRATION_KEEP, image.numel())).values[-1])
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
    missing, unexpected = model.load_state_dict(read_state_dict(path), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this architecture: missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


# -- export ----------------------------------------------------------------------------------
def export_torchvision_files(exportable, out_dir: Path, tolerance: float = 1e-3) -> dict:
    """Write ``model.pt`` (scripted) and ``model.onnx`` (one image, dynamic H/W) for a whole detector,
    reload both, compare them with the eager model on a test image, and write ``report.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = exportable.module.eval()
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
        export_detector_onnx(model, onnx_path, height, width)
    except Exception as error:  # noqa: BLE001 - reported, TorchScript stays usable
        onnx_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        onnx_path.unlink(missing_ok=True)
    timings["onnx_seconds"] = round(time.time() - started, 1)
    threshold = float(exportable.settings.get("score_threshold", 0.5))
    image, compared = parity_image(model, height, width, threshold)
    parity = compare_detector_backends(model, ts_path, None if onnx_error else onnx_path, image, threshold)
    return write_report(
        out_dir, exportable, tolerance,
        detection_format="torchvision",
        random_weights=exportable.random_weights,
        input="list of 3xHxW float images in [0, 1], any size (ONNX: one 3xHxW image per call)",
        outputs=list(output_keys(model)),
        files=["model.pt"] + ([] if onnx_error else ["model.onnx"]),
        onnx_error=onnx_error,
        parameters=sum(p.numel() for p in model.parameters()),
        flops_per_image=count_detector_flops(model, height, width),
        parity_image=[height, width],
        parity_detections=compared,
        max_abs_diff=parity,
        **timings)


def parity_image(model: nn.Module, height: int, width: int, threshold: float) -> Tuple[torch.Tensor, int]:
    """The first calibration image, resized to ``height`` × ``width`` (a size the model does not
    resize), on which the eager model finds something above ``threshold``; and how many it finds."""
    image, found = None, 0
    for photo in calibration_images(0)[0]:
        image = torch.nn.functional.interpolate(photo[None], size=(height, width), mode="bilinear",
                                                align_corners=False)[0]
        with torch.no_grad():
            found = int((model([image])[0]["scores"] > threshold).sum())
        if found:
            break
    return image, found


class OneImageDetections(nn.Module):
    """The detector on one image, returning ``keys`` (default ``output_keys(model)``) in that order
    (the ONNX exporter names outputs by position, and RetinaNet/FCOS put ``scores`` before ``labels``)."""

    def __init__(self, model: nn.Module, keys: Optional[Tuple[str, ...]] = None) -> None:
        super().__init__()
        self.model = model
        self.keys = tuple(keys or output_keys(model))

    def forward(self, images: List[torch.Tensor]):
        found = self.model(images)[0]
        return tuple(found[key] for key in self.keys)


def export_detector_onnx(model: nn.Module, path: Path, height: int, width: int,
                         keys: Optional[Tuple[str, ...]] = None) -> None:
    """One-image ONNX of a whole detector; ``keys``: its outputs in order (default ``output_keys(model)``)."""
    sample = smooth_image(height, width, seed=3)
    keys = tuple(keys or output_keys(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OneImageDetections(model, keys).eval(), ([sample],), str(path), opset_version=17, dynamo=False,
            input_names=["images"], output_names=list(keys),
            dynamic_axes={"images": [1, 2],
                          **{key: ([0, 2, 3] if key == "masks" else [0]) for key in keys}},  # masks K×1×H×W
        )
    # Keypoint R-CNN's keypoint decoding resizes each person's heatmaps with a bicubic Resize, which
    # ONNX Runtime's CPU kernel runs far slower than PyTorch (docs/performance.md): the same resize as two matrix
    # products (tools/export/onnx_cubic.py; equal to the Resize to float rounding).
    graph = onnx.load(str(path))
    if rewrite_cubic_resizes(graph):
        onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def detections_of(outputs: Dict[str, np.ndarray], threshold: float) -> Dict[str, np.ndarray]:
    """Every output's rows above ``threshold``, best first."""
    keep = np.nonzero(np.asarray(outputs["scores"]) > threshold)[0]
    rows = keep[np.argsort(-np.asarray(outputs["scores"])[keep], kind="stable")]
    return {key: np.asarray(value)[rows] for key, value in outputs.items()}


def detection_difference(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], threshold: float, side: float) -> float:
    """Largest difference between two answers above ``threshold`` matched in order: box edges and
    keypoint x, y as a fraction of ``side`` (the image's longer side), or scores (keypoint scores,
    heatmap logits of tens, relative to their size); inf when their lengths or labels differ."""
    a, b = detections_of(a, threshold), detections_of(b, threshold)
    if len(a["labels"]) != len(b["labels"]) or not np.array_equal(a["labels"], b["labels"]):
        return float("inf")
    if not len(a["labels"]):
        return 0.0
    differences = [np.abs(a["boxes"] - b["boxes"]).max() / side, np.abs(a["scores"] - b["scores"]).max()]
    if "keypoints" in a:
        differences += [np.abs(a["keypoints"][..., :2] - b["keypoints"][..., :2]).max() / side,
                        (np.abs(a["keypoints_scores"] - b["keypoints_scores"])
                         / np.maximum(1, np.abs(a["keypoints_scores"]))).max()]
    return float(max(differences))


def mask_disagreement(a: dict, b: dict, threshold: float, mask_threshold: float = 0.5) -> float:
    """Fraction of differing mask pixels between two answers (``boxes``, ``labels``, ``scores``,
    ``masks`` by name), over their detections above ``threshold`` matched in score order; 1.0 when
    their counts or labels differ."""
    def kept(found: dict) -> Tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(found["scores"])
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] > threshold]
        return np.asarray(found["labels"])[order], np.asarray(found["masks"])[order] > mask_threshold

    (labels_a, masks_a), (labels_b, masks_b) = kept(a), kept(b)
    if len(labels_a) != len(labels_b) or not np.array_equal(labels_a, labels_b):
        return 1.0
    return float((masks_a != masks_b).mean()) if masks_a.size else 0.0


def compare_detector_backends(model: nn.Module, ts_path: Path, onnx_path: Optional[Path], image: torch.Tensor,
                              threshold: float) -> Dict[str, float]:
    """Largest box or keypoint (as a fraction of the image's longer side) or score difference of the
    detections above ``threshold`` between eager, TorchScript and ONNX Runtime on one image that
    the models do not resize; for Mask R-CNN also the fraction of mask pixels that differ."""
    side = float(max(image.shape[1:]))
    keys = output_keys(model)
    with torch.no_grad():
        found = model([image])[0]
    eager = {k: found[k].numpy() for k in keys}
    array = image.numpy()
    # TorchScript outputs come sorted by name (runtimes.run_images), ONNX ones in export order
    torchscript = dict(zip(sorted(keys), load_runtime(ts_path).run_images([array])[0]))
    diffs = {"torchscript_vs_eager": detection_difference(torchscript, eager, threshold, side)}
    if onnx_path is not None:
        onnx = dict(zip(keys, load_runtime(onnx_path).run_images([array])[0]))
        diffs["onnx_vs_eager"] = detection_difference(onnx, eager, threshold, side)
        diffs["onnx_vs_torchscript"] = detection_difference(onnx, torchscript, threshold, side)
    if "masks" in keys:
        answers = {"eager": eager, "torchscript": torchscript, **({"onnx": onnx} if onnx_path is not None else {})}
        for name in list(diffs):
            a, b = name.split("_vs_")
            diffs[f"masks_{name}"] = mask_disagreement(answers[a], answers[b], threshold)
    return diffs


def count_detector_flops(model: nn.Module, height: int, width: int) -> Optional[int]:
    """FLOPs of one image of ``height`` × ``width`` (the convolutions and matrix products torch counts);
    None if counting fails."""
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model([torch.zeros(3, height, width)])
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - FLOPs are informative only
        return None

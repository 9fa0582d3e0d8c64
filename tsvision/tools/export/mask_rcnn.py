"""Mask R-CNN for ``task: instance_segmentation``, ``detection_format: torchvision`` (export time only).

Architectures (``tsvision export --task instance_segmentation --arch NAME``):

- ``maskrcnn_mobilenet_v3_large_320_fpn`` (the default): torchvision's ``MaskRCNN`` with the
  backbone, anchors and test-time settings of ``fasterrcnn_mobilenet_v3_large_320_fpn``
  (MobileNetV3-Large FPN, images resized to 320 on the short side, 150 proposals) and
  torchvision's standard mask head (4 × 256 convolutions at 14×14, 28×28 mask logits). Not a
  torchvision builder: torchvision ships Mask R-CNN with ResNet-50 only, too heavy for 2 cores.
  A ``--checkpoint`` must come from this same construction (``build_mask_rcnn``).
- ``maskrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn_v2``: torchvision's own builders.

The exported file is the whole detector, as for Faster R-CNN (tools/export/torchvision_detectors.py):
scripted ``model.pt`` (a list of 3×H×W images in [0, 1] in; per image ``boxes``, ``labels``,
``scores`` and ``masks`` K×1×H×W soft masks at the image's own size) and a one-image ONNX.
Random weights are conditioned like the detectors' (``condition_random_detector``), then the
backbone's BatchNorm statistics, the class logit and the mask logits again on photos
(``condition_on_photos``); that teaches the model nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor

from tsvision.tools.export.calibration import (
    CONDITIONED_CLASS,
    CONDITIONED_SCORE_THRESHOLD,
    LOGIT_SPREAD,
    calibration_images,
)
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.pretrained import build_pretrained
from tsvision.tools.export.torchvision_detectors import condition_random_detector, load_detector_checkpoint

CALIBRATION_KEEP = 6  # proposals above the score threshold in the median calibration image

DEFAULT_ARCHITECTURE = "maskrcnn_mobilenet_v3_large_320_fpn"
TORCHVISION_BUILDERS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
ARCHITECTURES = (DEFAULT_ARCHITECTURE, *TORCHVISION_BUILDERS)
OUTPUT_NAMES = ["boxes", "labels", "scores", "masks"]


def coco_labels() -> List[str]:
    return list(MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])


def build_mask_rcnn(architecture: str, num_classes: int) -> nn.Module:
    """An untrained Mask R-CNN (BatchNorm, not frozen, in the backbone: a random backbone's statistics
    are recomputed by the conditioning)."""
    if architecture in TORCHVISION_BUILDERS:
        return torchvision.models.get_model(architecture, weights=None, weights_backbone=None, num_classes=num_classes)
    if architecture != DEFAULT_ARCHITECTURE:
        raise ValueError(f"unknown instance segmentation architecture {architecture!r}; known: {list(ARCHITECTURES)}")
    backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d), True, 6)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3  # as fasterrcnn_mobilenet_v3_large_320_fpn
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return MaskRCNN(backbone, num_classes, rpn_anchor_generator=anchors, min_size=320, max_size=640,
                    rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=150, rpn_score_thresh=0.05)


def build_instance_segmenter(architecture: Optional[str], checkpoint: Optional[Path], num_classes: Optional[int],
                             labels: Optional[List[str]], seed: int, weights: Optional[str] = None):
    """An ``Exportable`` Mask R-CNN: seeded random weights (conditioned), ``checkpoint``, or torchvision's
    pretrained ``weights`` (``maskrcnn_resnet50_fpn``/``_v2`` only; tools/export/pretrained.py)."""
    architecture = architecture or DEFAULT_ARCHITECTURE
    preset = None
    if weights is not None:
        model, preset, labels = build_pretrained("instance_segmentation", architecture, weights, num_classes, labels)
    else:
        labels = labels if labels is not None else coco_labels()
        torch.manual_seed(seed)
        model = build_mask_rcnn(architecture, num_classes or len(labels))
    random_weights = checkpoint is None and weights is None
    if checkpoint is not None:
        load_detector_checkpoint(model, checkpoint)
    transform = model.transform
    settings = {"detection_format": "torchvision", "input_size": int(transform.min_size[-1]), "background_index": 0,
                "mean": list(transform.image_mean), "std": list(transform.image_std)}
    if random_weights:
        condition_random_detector(model, seed)
        condition_on_photos(model, seed)
        # Below the served threshold nothing is answered: the model need not paste those masks.
        model.roi_heads.score_thresh = CONDITIONED_SCORE_THRESHOLD
        settings["score_threshold"] = CONDITIONED_SCORE_THRESHOLD
    return Exportable("instance_segmentation", architecture, model.eval(), settings, labels, random_weights,
                      list(OUTPUT_NAMES),
                      None if preset is None else str(preset))


def _logits(model: nn.Module, layer: nn.Module, channel: int, images: List[torch.Tensor]) -> List[torch.Tensor]:
    """Per image, the values of one output channel of ``layer`` while the model runs on it."""
    seen: List[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out[:, channel].detach().flatten()))
    per_image = []
    try:
        with torch.no_grad():
            for image in images:
                seen.clear()
                model.eval()([image])
                per_image.append(torch.cat(seen) if seen else torch.zeros(0))
    finally:
        handle.remove()
    return per_image


def batchnorm_on_images(model: nn.Module, images: List[torch.Tensor]) -> None:
    """The backbone's BatchNorm running statistics as the average over ``images`` (as the model sees them)."""
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.eval()
    model.backbone.train()
    try:
        with torch.no_grad():
            for image in images:
                model.backbone(model.transform([image])[0].tensors)
    finally:
        model.eval()


def condition_on_photos(model: nn.Module, seed: int) -> None:
    """After ``condition_random_detector`` (BatchNorm statistics from noise, one class kept), on the
    calibration images (``tools/export/calibration.py``: scikit-image's photos where installed):

    0. the backbone's BatchNorm statistics are recomputed on those images (statistics from noise
       leave photos' activations, and so their scores, at wildly different scales: dozens of
       detections scoring 1.0 on one photo, ties decided by rounding, none on the next);
    1. the class logit of ``CONDITIONED_CLASS`` is standardised again over the proposals of every
       image and shifted so that the median image has about
       ``CALIBRATION_KEEP`` proposals above ``CONDITIONED_SCORE_THRESHOLD`` (random networks
       respond very unevenly: some photos get many more, some none);
    2. the mask logits of that class are standardised to ``LOGIT_SPREAD`` around 0 over the
       detections of those images (untrained ones sit near 0: probabilities near the 0.5 mask
       threshold, where rounding would decide each pixel)."""
    images = calibration_images(seed)[0]
    batchnorm_on_images(model, images)
    layer = model.roi_heads.box_predictor.cls_score
    per_image = _logits(model, layer, CONDITIONED_CLASS, images)
    values = torch.cat(per_image)
    mean, std = float(values.mean()), float(values.std()) or 1.0
    t = CONDITIONED_SCORE_THRESHOLD
    at_threshold = float(np.log(t / (1 - t)) + np.log(layer.out_features - 1))  # softmax against C - 1 near-zero logits
    kth = float(np.median([float(torch.topk((v - mean) * LOGIT_SPREAD / std,
                                            min(CALIBRATION_KEEP, v.numel())).values[-1])
                           for v in per_image if v.numel()]))
    with torch.no_grad():
        layer.weight[CONDITIONED_CLASS] *= LOGIT_SPREAD / std
        layer.bias[CONDITIONED_CLASS] = (layer.bias[CONDITIONED_CLASS] - mean) * LOGIT_SPREAD / std + at_threshold - kth
    masks = model.roi_heads.mask_predictor.mask_fcn_logits
    found = [v for v in _logits(model, masks, CONDITIONED_CLASS, images) if v.numel()]
    if not found:
        return
    values = torch.cat(found)
    mean, std = float(values.mean()), float(values.std()) or 1.0
    with torch.no_grad():
        masks.weight[CONDITIONED_CLASS] *= LOGIT_SPREAD / std
        masks.bias[CONDITIONED_CLASS] = (masks.bias[CONDITIONED_CLASS] - mean) * LOGIT_SPREAD / std

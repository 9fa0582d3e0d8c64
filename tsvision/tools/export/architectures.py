"""torchvision architectures -> modules with the documented tensor contract (export time only).

Every exported graph takes one float32 N×3×S×S batch (already normalised; segmentation: N×3×H×W,
any H and W) and returns: classification ``logits`` N×C; segmentation ``logits`` N×C×H×W; detection ``boxes`` N×A×4
(model-input pixels) and ``scores`` N×A×C (softmax; column 0 is background).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
import torchvision
from torch import nn
from torchvision.models.detection.image_list import ImageList

from tsvision.tools.export.calibration import recompute_batchnorm
from tsvision.tools.export.checkpoints import load_checkpoint
from tsvision.tools.export.embedders import DEFAULT_EMBEDDER, build_embedder
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.mask_rcnn import build_instance_segmenter
from tsvision.tools.export.pretrained import build_pretrained, settings_from_preset
from tsvision.tools.export.torchvision_detectors import (
    OWN_ARCHITECTURES,
    build_torchvision_detector,
    is_torchvision_detector,
    keypoint_count,
    load_detector_checkpoint,
    output_keys,
)

DEFAULT_ARCHITECTURES = {
    "classification": "mobilenet_v3_small",
    "segmentation": "lraspp_mobilenet_v3_large",
    "detection": "ssdlite320_mobilenet_v3_large",
    "keypoints": "keypointrcnn_mobilenet_v3_large_320_fpn",  # tsvision's own (torchvision_detectors.OWN_ARCHITECTURES)
    "instance_segmentation": "maskrcnn_mobilenet_v3_large_320_fpn",  # tools/export/mask_rcnn.py
    "embedding": DEFAULT_EMBEDDER,  # any torchvision classifier, its head dropped (tools/export/embedders.py)
}
# An SSD with untrained (unconditioned) weights: its class scores sit near 1/C (top around 0.036 for
# COCO's 91), so the usual 0.5 would show nothing; the demo shows its (meaningless) top boxes instead.
UNTRAINED_SSD_SCORE_THRESHOLD = 0.03
OUTPUT_NAMES = {"classification": ["logits"], "segmentation": ["logits"], "detection": ["boxes", "scores"]}


class SegmentationLogits(nn.Module):
    """torchvision segmentation models return {"out": ..., "aux": ...}; keep "out"."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


class SSDBoxesScores(nn.Module):
    """An SSD/SSDlite detector up to decoded boxes and class probabilities, for a fixed input size.

    Anchors depend only on the input size, so they are computed once here and stored; the
    batch axis stays free. Boxes are clipped to the input, as torchvision's SSD does before its NMS.
    NMS and the mapping to original pixels run in the handler.
    """

    def __init__(self, model: nn.Module, input_size: int) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        weights = torch.tensor(model.box_coder.weights, dtype=torch.float32)
        self.register_buffer("coder_weights", weights)
        self.clip = float(model.box_coder.bbox_xform_clip)
        self.size = float(input_size)
        with torch.no_grad():
            probe = torch.zeros(1, 3, input_size, input_size)
            features = list(model.backbone(probe).values())
            anchors = model.anchor_generator(ImageList(probe, [(input_size, input_size)]), features)[0]
        self.register_buffer("anchors", anchors[None])

    def forward(self, images: torch.Tensor):
        features = list(self.backbone(images).values())
        head = self.head(features)
        deltas, logits = head["bbox_regression"], head["cls_logits"]
        widths = self.anchors[..., 2] - self.anchors[..., 0]
        heights = self.anchors[..., 3] - self.anchors[..., 1]
        centre_x = self.anchors[..., 0] + 0.5 * widths
        centre_y = self.anchors[..., 1] + 0.5 * heights
        wx, wy, ww, wh = self.coder_weights[0], self.coder_weights[1], self.coder_weights[2], self.coder_weights[3]
        cx = deltas[..., 0] / wx * widths + centre_x
        cy = deltas[..., 1] / wy * heights + centre_y
        w = torch.exp(torch.clamp(deltas[..., 2] / ww, max=self.clip)) * widths
        h = torch.exp(torch.clamp(deltas[..., 3] / wh, max=self.clip)) * heights
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        return boxes.clamp(0.0, self.size), torch.softmax(logits, dim=-1)


def build_exportable(
    task: str,
    architecture: Optional[str] = None,
    checkpoint: Optional[Path] = None,
    num_classes: Optional[int] = None,
    labels: Optional[List[str]] = None,
    seed: int = 0,
    model_args: Optional[dict] = None,
    weights: Optional[str] = None,
) -> Exportable:
    """Instantiate ``architecture`` (seeded random weights, ``checkpoint``, or torchvision's pretrained
    ``weights`` such as ``"DEFAULT"``: tools/export/pretrained.py) for ``task``.
    ``model_args`` go to torchvision's model builder, e.g. ``{"min_size": 320, "max_size": 480}``
    for a detector that resizes to a smaller image than its default."""
    refuse_weights_model_args(model_args)
    if weights is not None and checkpoint is not None:
        raise ValueError("--weights and --checkpoint exclude each other: a checkpoint is the whole state dict; "
                         "pass one of them")
    if task == "embedding":  # a classifier without its head (tools/export/embedders.py)
        if labels is not None or num_classes is not None:
            raise ValueError("--task embedding has no classes: drop --labels and --num-classes")
        return build_embedder(architecture, checkpoint, seed, model_args, weights)
    if task == "instance_segmentation":  # a whole Mask R-CNN (tools/export/mask_rcnn.py)
        return build_instance_segmenter(architecture, checkpoint, num_classes, labels, seed, weights)

    architecture = architecture or DEFAULT_ARCHITECTURES[task]
    preset = None
    if weights is not None:
        model, preset, labels = build_pretrained(task, architecture, weights, num_classes, labels, model_args)
    elif architecture in OWN_ARCHITECTURES:  # not in torchvision's registry
        builder, default_labels = OWN_ARCHITECTURES[architecture]
        labels = list(default_labels) if labels is None else labels
        torch.manual_seed(seed)
        model = builder(num_classes=num_classes or len(labels), **(model_args or {}))
    else:
        weights_enum = torchvision.models.get_model_weights(architecture)
        preset = weights_enum.DEFAULT
        if labels is None:
            labels = list(preset.meta["categories"])
        torch.manual_seed(seed)
        extra = {"weights_backbone": None} if task != "classification" else {}
        model = torchvision.models.get_model(architecture, weights=None, num_classes=num_classes or len(labels),
                                             **extra,
                                             **(model_args or {}))
    if checkpoint is not None:
        (load_detector_checkpoint if is_torchvision_detector(model) else load_checkpoint)(model, checkpoint)
    model.eval()
    random_weights = checkpoint is None and weights is None
    weights_name = str(preset) if weights is not None else None

    if task == "classification":
        module = model
        settings = settings_from_preset(task, preset)
    elif task == "segmentation":
        module = SegmentationLogits(model)
        # torchvision's preset and reference evaluation: shorter side to 520, any aspect ratio (docs/models.md)
        settings = {**settings_from_preset(task, preset), "resize_mode": "shorter_side"}
    elif is_torchvision_detector(model):
        # Faster R-CNN, RetinaNet, FCOS, Keypoint R-CNN: the whole detector (export/torchvision_detectors.py)
        keypoints = keypoint_count(model) > 0
        if keypoints != (task == "keypoints"):
            raise ValueError(f"{architecture} is {'a keypoint' if keypoints else 'not a keypoint'} model: export it "
                             f"with "
                             f"--task {'keypoints' if keypoints else 'detection'}")
        model, settings = build_torchvision_detector(model, architecture, random_weights, seed)
        return Exportable(task, architecture, model, settings, labels, random_weights, list(output_keys(model)),
                          weights_name)
    elif task == "keypoints":
        raise ValueError(f"{architecture} is not a Keypoint R-CNN; --task keypoints exports Keypoint R-CNNs "
                         "(keypointrcnn_mobilenet_v3_large_320_fpn, keypointrcnn_resnet50_fpn) and ultralytics pose "
                         "models (yolov8n-pose)")
    else:
        if (not hasattr(model, "anchor_generator") or not hasattr(model, "box_coder")
                or not hasattr(model.head, "classification_head")):
            raise ValueError(f"{architecture}: only SSD/SSDlite detectors export to the boxes/scores contract; "
                             "export other detectors yourself (see docs/models.md)")
        size = int(model.transform.fixed_size[0]) if model.transform.fixed_size else int(model.transform.min_size[0])
        module = SSDBoxesScores(model, size)
        # resized as the model's own transform does: normalised floats through F.interpolate, no antialiasing
        settings = {"input_size": size, "resize_mode": "stretch", "interpolation": "bilinear_float",
                    "mean": list(model.transform.image_mean),
                    "std": list(model.transform.image_std), "background_index": 0,
                    "iou_threshold": float(model.nms_thresh)}
    if random_weights:
        calibrate_batchnorm(module, settings["input_size"], seed)
        if task == "detection":
            settings["score_threshold"] = UNTRAINED_SSD_SCORE_THRESHOLD
    return Exportable(task, architecture, module.eval(), settings, labels, random_weights, OUTPUT_NAMES[task],
                      weights_name)


def refuse_weights_model_args(model_args: Optional[dict]) -> None:
    """``--model-arg weights=...`` (or ``weights_backbone``) would reach torchvision's builder twice:
    pretrained weights go through ``--weights`` (the hub cache, the weights' labels and transforms)."""
    given = sorted({"weights", "weights_backbone"} & set(model_args or {}))
    if given:
        raise ValueError(f"--model-arg {given[0]}=... is not passed to torchvision: use --weights NAME "
                         "(DEFAULT or a weights name of the architecture) for pretrained weights of the whole model")


def calibrate_batchnorm(module: nn.Module, input_size: int, seed: int, steps: int = 4, batch: int = 4) -> None:
    """BatchNorm statistics of random weights from seeded noise (``calibration.recompute_batchnorm``)."""
    recompute_batchnorm(module, seed, (batch, 3, input_size, input_size), steps)

"""``torchvision``: a whole torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD; Mask R-CNN;
Keypoint R-CNN), scripted or exported to ONNX, that resizes and normalises each image itself and
runs its own NMS. Its task classes read the outputs (tasks/torchvision_detection.py,
tasks/instance_segmentation.py, tasks/keypoints.py); label 0 is the background.
"""

from __future__ import annotations

from tsvision.serving.formats.registry import Format

TASKS = "tsvision.serving.tasks"

FORMATS = (
    Format("torchvision", "detection", background=True, nms_free=True,
           task_class=f"{TASKS}.torchvision_detection:TorchvisionDetectionTask"),
    Format("torchvision", "instance_segmentation", background=True, nms_free=True,
           task_class=f"{TASKS}.instance_segmentation:TorchvisionInstanceSegmentationTask"),
    Format("torchvision", "keypoints", background=True, nms_free=True,
           task_class=f"{TASKS}.keypoints:TorchvisionKeypointsTask"),
)

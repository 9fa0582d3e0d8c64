"""TorchServe's --handler for object detection (`torch-model-archiver --handler handlers/object_detector.py`).

The class is tsvision's; TorchServe loads the one class this file defines. To change a step,
copy this file and override ``preprocess``, ``inference`` or ``postprocess`` (docs/handlers.md).
"""

from tsvision.serving import ObjectDetector as _ObjectDetector


class ObjectDetector(_ObjectDetector):
    """tsvision's ObjectDetector, as TorchServe loads it."""

"""TorchServe's --handler for keypoints / pose (`torch-model-archiver --handler handlers/keypoint_detector.py`).

The class is tsvision's; TorchServe loads the one class this file defines. To change a step,
copy this file and override ``preprocess``, ``inference`` or ``postprocess`` (docs/handlers.md).
"""

from tsvision.serving import KeypointDetector as _KeypointDetector


class KeypointDetector(_KeypointDetector):
    """tsvision's KeypointDetector, as TorchServe loads it."""

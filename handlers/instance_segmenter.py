"""TorchServe's --handler for instance segmentation (`torch-model-archiver --handler handlers/instance_segmenter.py`).

The class is tsvision's; TorchServe loads the one class this file defines. To change a step,
copy this file and override ``preprocess``, ``inference`` or ``postprocess`` (docs/handlers.md).
"""

from tsvision.serving import InstanceSegmenter as _InstanceSegmenter


class InstanceSegmenter(_InstanceSegmenter):
    """tsvision's InstanceSegmenter, as TorchServe loads it."""

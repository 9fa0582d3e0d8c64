"""TorchServe's --handler for semantic segmentation (`torch-model-archiver --handler handlers/image_segmenter.py`).

The class is tsvision's; TorchServe loads the one class this file defines. To change a step,
copy this file and override ``preprocess``, ``inference`` or ``postprocess`` (docs/handlers.md).
"""

from tsvision.serving import ImageSegmenter as _ImageSegmenter


class ImageSegmenter(_ImageSegmenter):
    """tsvision's ImageSegmenter, as TorchServe loads it."""

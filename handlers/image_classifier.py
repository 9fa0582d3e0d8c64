"""TorchServe's --handler for classification (`torch-model-archiver --handler handlers/image_classifier.py`).

The class is tsvision's; TorchServe loads the one class this file defines. To change a step,
copy this file and override ``preprocess``, ``inference`` or ``postprocess`` (docs/handlers.md).
"""

from tsvision.serving import ImageClassifier as _ImageClassifier


class ImageClassifier(_ImageClassifier):
    """tsvision's ImageClassifier, as TorchServe loads it."""

"""TorchServe's --handler for embedding (`torch-model-archiver --handler handlers/image_embedder.py`).

The class is tsvision's; TorchServe loads the one class this file defines. To change a step,
copy this file and override ``preprocess``, ``inference`` or ``postprocess`` (docs/handlers.md).
"""

from tsvision.serving import ImageEmbedder as _ImageEmbedder


class ImageEmbedder(_ImageEmbedder):
    """tsvision's ImageEmbedder, as TorchServe loads it."""

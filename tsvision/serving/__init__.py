"""What runs inside a TorchServe worker: copied whole into every archive.

Nothing here imports ``tsvision.tools``. The handler classes need TorchServe (``ts``) and are
imported lazily, so the tasks run in-process without it::

    from tsvision.serving import ObjectDetector          # in a handler file of your own
    from tsvision.serving.tasks import build_task        # in-process, no TorchServe
"""

HANDLER_CLASSES = ("VisionHandler", "ImageClassifier", "ImageSegmenter", "ObjectDetector",
                   "InstanceSegmenter", "KeypointDetector", "ImageEmbedder")


def __getattr__(name: str):
    if name in HANDLER_CLASSES:
        from tsvision.serving import handler

        return getattr(handler, name)
    raise AttributeError(f"module 'tsvision.serving' has no attribute {name!r}")

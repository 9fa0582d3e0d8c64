"""tsvision: TorchServe handlers for image classification, segmentation and detection.

The task logic (``classification``, ``segmentation``, ``detection``) runs a whole batch
in-process and does not import TorchServe; ``torchserve_handler`` is the thin adapter.
"""

__version__ = "0.1.0"

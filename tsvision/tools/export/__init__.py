"""The export room: torchvision, whole-detector, Mask R-CNN and ultralytics exports, random-weights conditioning,
ONNX rewrites, quantisation, pretrained weights and ``tsvision export`` (``cli.py``). Imports only
``tsvision.serving`` and ``tsvision.tools.command``."""

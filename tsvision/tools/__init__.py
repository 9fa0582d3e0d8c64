"""Build and operations tooling: never shipped in an archive (``tsvision/serving`` never imports it).

Rooms, each a package, in the one order their imports may go (a module imports only from its own room and
the rooms listed before it; ``tests/test_import_graph.py`` keeps it so)::

    command   the CLI plumbing every command shares: parser, argparse types, CommandError / UsageError, and
              entry_point, the one place an exception becomes an exit status
    export    torchvision / whole-detector / Mask R-CNN / ultralytics exports, conditioning, ONNX rewrites,
              quantisation, pretrained weights; ``tsvision export``
    archive   inspect a model, resolve its settings, check it through LocalWorker, pack the .mar;
              ``tsvision archive``, ``tsvision extra-files``
    serve     TorchServe (server), management (``tsvision manage``), processes, keys
    clients   ``tsvision predict``, the gRPC client and stubs, the OIP gateway (``tsvision gateway``)
    routing   routing file, buckets, templates, router processes (proxy); ``tsvision route``, ``tsvision report``
    batch     an archive over many images on Ray Data (one model load per actor, LocalWorker); ``tsvision batch``
    cli       ``tsvision COMMAND``: names each room's command; on top of everything

Imports inside functions are kept for optional or heavy dependencies a command does not always need
(ultralytics, scikit-image's photos, onnxruntime's quantisation, torch._inductor for --pt2, grpc in a REST
``tsvision predict``, grpcio-tools' protoc, ray and pyarrow for ``tsvision batch``), each with a comment saying so.
"""

import logging

# TorchServe's base_handler warns at import that two optional torch.compile backends are absent;
# the in-process checks import it, so every archive run printed them. Only these two lines are
# dropped (inside a TorchServe worker, where the tooling is never imported, they stay in the log).
_ABSENT_BACKENDS = {"OpenVINO is not enabled", "Torch TensorRT not enabled"}
logging.getLogger("ts.torch_handler.base_handler").addFilter(lambda record: record.getMessage() not in _ABSENT_BACKENDS)

"""Build and operations tooling (export, archive, clients, management, routing): never shipped in an archive."""

import logging

# TorchServe's base_handler warns at import that two optional torch.compile backends are absent;
# the in-process checks import it, so every archive run printed them. Only these two lines are
# dropped (inside a TorchServe worker, where the tooling is never imported, they stay in the log).
_ABSENT_BACKENDS = {"OpenVINO is not enabled", "Torch TensorRT not enabled"}
logging.getLogger("ts.torch_handler.base_handler").addFilter(lambda record: record.getMessage() not in _ABSENT_BACKENDS)

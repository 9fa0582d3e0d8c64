"""A handler that does nothing: serving it measures what TorchServe itself costs per request
(HTTP, batching, the frontend-to-worker socket), the floor under any handler's latency and rate."""

from ts.torch_handler.base_handler import BaseHandler


class EmptyHandler(BaseHandler):
    def initialize(self, context) -> None:
        self.initialized = True

    def handle(self, data, context):
        return ["{}"] * len(data)

"""Run a handler in-process the way a TorchServe worker does: TorchServe's own ``Context``,
``RequestProcessor`` and metrics cache, the handler's ``initialize`` and ``handle``.

Used by the tests (statuses, headers and content types per request, in milliseconds) and by
``tsvision archive`` to try a user's handler file before it is packed.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ts
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.torch_handler.base_handler import BaseHandler


@dataclass
class LocalResponse:
    status: int
    headers: Dict[str, str]
    body: Any  # the handler's output for this request (JSON text for tsvision handlers)

    def json(self) -> Any:
        return json.loads(self.body)


def load_handler_class(path: Path) -> type:
    """The one class a handler file defines (TorchServe's rule), imported from ``path``."""
    name = f"tsvision_handler_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == name]
    if len(classes) != 1:
        raise ValueError(f"{path} defines {len(classes)} classes ({[c.__name__ for c in classes]}); "
                         "TorchServe needs exactly one handler class per file")
    if not issubclass(classes[0], BaseHandler):
        raise ValueError(f"{path}: {classes[0].__name__} is not a TorchServe BaseHandler subclass")
    return classes[0]


class LocalWorker:
    """One handler instance over a model folder (the model file, labels) and a model-config mapping."""

    def __init__(self, handler_class: type, model_dir: Path, model_file: str, config: Mapping[str, Any],
                 name: str = "model", version: str = "1.0", gpu: Optional[int] = None) -> None:
        manifest = {"model": {"modelName": name, "modelVersion": version, "serializedFile": model_file}}
        metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
        metrics.initialize_cache()
        # The only worker of this process: its runtime gets all the process's cores, whatever number of
        # workers the archive's model-config asks TorchServe for.
        config = {**config, "minWorkers": 1, "maxWorkers": 1}
        self.context = Context(name, str(model_dir), manifest, int(config.get("batchSize", 1)), gpu, ts.__version__,
                               True, metrics, dict(config))
        self.handler = handler_class()
        self.handler.initialize(self.context)

    def predict(self, rows: Sequence[Any],
                headers: Optional[Sequence[Mapping[str, Any]]] = None) -> List[LocalResponse]:
        """One batch: ``rows`` as the worker hands them to ``handle`` ({"body": bytes} ...), with each
        request's headers ({"body": {"content-type": ...}, "Accept": ...})."""
        headers = list(headers or [{} for _ in rows])
        ids = {index: uuid.uuid4().hex for index in range(len(rows))}
        self.context.request_ids = ids
        self.context.request_processor = [RequestProcessor(dict(h)) for h in headers]
        self.context.metrics.request_ids = ids
        outputs = self.handler.handle(list(rows), self.context)
        if len(outputs) != len(rows):
            raise AssertionError(f"the handler returned {len(outputs)} answers for {len(rows)} requests")
        return [LocalResponse(self.context.get_response_status(i)[0], dict(self.context.get_response_headers(i)), out)
                for i, out in enumerate(outputs)]

"""The TorchServe adapter: context -> task, rows -> payloads, per-request status and JSON.

This file is the archive's ``--handler``. It must define exactly one class (TorchServe's rule
for custom handlers); all task logic lives in the ``handlers`` package shipped beside it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ts.torch_handler.base_handler import BaseHandler

from handlers.errors import InputError
from handlers.requests import payloads_from_rows
from handlers.settings import Settings
from handlers.task import build_task

logger = logging.getLogger(__name__)


class VisionHandler(BaseHandler):
    """Serves any tsvision task; the task and its settings come from ``model-config.yaml``."""

    def initialize(self, context) -> None:
        started = time.time()
        model_dir = Path(context.system_properties["model_dir"])
        serialized = context.manifest["model"]["serializedFile"]
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        self.settings = Settings.from_mapping(config)
        self.task = build_task(model_dir / serialized, self.settings, model_dir)
        self.task.warm_up()
        self.context = context
        self.initialized = True
        if self.settings.random_weights:
            logger.warning("%s: this model has RANDOM weights; its answers are meaningless", serialized)
        logger.info("tsvision %s on %s ready in %.1f s", self.settings.task, self.task.runtime.name, time.time() - started)

    def handle(self, data, context):
        payloads = payloads_from_rows(data)
        try:
            results = self.task.run(payloads)
        except Exception as error:  # the model itself failed: answer every request, keep the worker
            logger.exception("inference failed")
            failure = InputError(500, "InferenceError", f"the model failed on this batch: {error}")
            results = [p if isinstance(p, InputError) else failure for p in payloads]
        responses = []
        for index, result in enumerate(results):
            context.set_response_content_type(index, "application/json")
            context.set_response_header(index, "X-Batch-Size", str(len(results)))
            if isinstance(result, InputError):
                context.set_response_status(result.status, result.phrase, idx=index)
                result = result.to_body()
            responses.append(json.dumps(result))
        return responses

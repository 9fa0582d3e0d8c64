"""The TorchServe adapter: context -> task, rows -> responses, per-request status and JSON.

This file is the archive's ``--handler``. It must define exactly one class (TorchServe's rule
for custom handlers); all task logic lives in the ``handlers`` package shipped beside it.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

from ts.torch_handler.base_handler import BaseHandler

from handlers.errors import internal_error
from handlers.requests import is_stream
from handlers.service import Response, answer_requests
from handlers.settings import Settings
from handlers.task import build_task

logger = logging.getLogger(__name__)


class VisionHandler(BaseHandler):
    """Serves any tsvision task; the task and its settings come from ``model-config.yaml``."""

    def initialize(self, context) -> None:
        started = time.time()
        model_dir = Path(context.system_properties["model_dir"])
        model = context.manifest["model"]
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        self.settings = Settings.from_mapping(config)
        self.task = build_task(model_dir / model["serializedFile"], self.settings, model_dir)
        self.task.warm_up()
        self.model_name, self.model_version = model.get("modelName", ""), model.get("modelVersion", "")
        self.initialized = True
        if self.settings.random_weights:
            logger.warning("%s: this model has RANDOM weights; its answers are meaningless", self.model_name)
        logger.info("tsvision %s on %s ready in %.1f s", self.settings.task, self.task.runtime.name, time.time() - started)

    def handle(self, data, context):
        headers = [context.get_all_request_header(index) or {} for index in range(len(data))]
        try:
            responses = answer_requests(self.task, data, headers, self.model_name, self.model_version)
        except Exception:  # a bug outside every per-request guard: each request its 500, the worker lives on
            failure = internal_error("InternalError", "answering this batch failed")
            responses = [Response(failure.status, failure.to_body())] * len(data)
        bodies = []
        for index, response in enumerate(responses):
            context.set_response_content_type(index, "application/json")
            context.set_response_header(index, "X-Batch-Size", str(len(data)))
            if response.headline:
                context.set_response_header(index, "X-Top-Label", quote(response.headline, safe=" '"))
            if is_stream(data[index]):
                # StreamPredictions: this one message is the whole answer; TorchServe closes the
                # stream on "false" (and fails without the header). Never set for REST.
                context.set_response_header(index, "ts_stream_next", "false")
            if response.status != 200:
                context.set_response_status(response.status, HTTPStatus(response.status).phrase, idx=index)
            try:
                body = json.dumps(response.body)
            except Exception:
                failure = internal_error("PostprocessError", "serialising this answer failed")
                context.set_response_status(500, HTTPStatus(500).phrase, idx=index)
                body = json.dumps(failure.to_body())
            bodies.append(body)
        return bodies

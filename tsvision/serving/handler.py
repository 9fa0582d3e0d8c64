"""The TorchServe handler classes: TorchServe's own ``handle()`` flow over a tsvision task.

``BaseHandler.handle`` calls ``preprocess(data)`` (parse every request, decode and prepare the
good images), ``inference(batch)`` (one forward pass) and ``postprocess(batch)`` (each image's
answer, then each request's status, headers and JSON body). Each hook is TorchServe's, timed
by its ``@timed`` when ``handler: profile: true``; override one in a subclass::

    from tsvision.serving import ObjectDetector

    class PeopleOnly(ObjectDetector):
        def postprocess(self, batch):
            self.finish(batch).update(lambda boxes: [b for b in boxes if b["label"] == "person"])
            return self.respond(batch)

The entry files TorchServe loads (``handlers/image_classifier.py`` ...) subclass these; a file
given to ``torch-model-archiver --handler`` must define exactly one class.
"""

from __future__ import annotations

import atexit
import json
import logging
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any, List, Optional
from urllib.parse import quote

from ts.handler_utils.timer import timed
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from tsvision import __version__
from tsvision.serving import explanations
from tsvision.serving.errors import RequestError, internal_error
from tsvision.serving.payloads import is_stream
from tsvision.serving.runtimes import available_cores, pick_device
from tsvision.serving.service import Batch, Response, read_batch
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task

logger = logging.getLogger(__name__)
HOOKS = ("preprocess", "inference", "postprocess")
# The slot in the prediction batch of a request answered by ``explanations`` (replaced in ``respond``).
EXPLAINED = RequestError(500, "InternalError", "this explanation request was not answered (a postprocess override "
                                               "that skips respond())")


class VisionHandler(BaseHandler):
    """Serves a tsvision task; the task and its settings come from the archive's ``model-config.yaml``."""

    task_name: Optional[str] = None  # the task this handler serves; None: any, as the settings say

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass's own ``preprocess``/``inference``/``postprocess`` get TorchServe's ``@timed``
        too, so ``handler: profile: true`` still reports every step after a user overrides one."""
        super().__init_subclass__(**kwargs)
        for hook in HOOKS:
            method = cls.__dict__.get(hook)
            if callable(method) and method.__name__ == hook:  # not already wrapped by @timed
                setattr(cls, hook, timed(method))

    # -- start-up ----------------------------------------------------------------------------
    def initialize(self, context) -> None:
        started = time.time()
        self.context = context
        model_dir = Path(context.system_properties["model_dir"])
        self.manifest = context.manifest
        model = context.manifest["model"]
        config = getattr(context, "model_yaml_config", None) or {}
        self.settings = Settings.from_mapping(config.get("handler") or {"task": self.task_name})
        if self.task_name and self.settings.task != self.task_name:
            raise ValueError(f"{type(self).__name__} serves {self.task_name}, "
                             f"but the archive's settings say task: {self.settings.task}")
        self.device = pick_device(context.system_properties.get("gpu_id"))
        workers = int(config.get("minWorkers") or default_workers(self.device))
        self.task = build_task(model_dir / model["serializedFile"], self.settings, model_dir, workers, self.device)
        if self.task.settings.labels != self.settings.labels:  # found in the archive (tasks.LABEL_FILES)
            logger.info("labels: %s in the archive (%d names; the settings name no labels file)",
                        self.task.settings.labels, len(self.task.labels))
            self.settings = self.task.settings
        self.task.warm_up()
        atexit.register(self.task.close)  # the preparation threads end with the worker
        self.model_name, self.model_version = model.get("modelName", ""), model.get("modelVersion", "")
        self.initialized = True
        if self.settings.random_weights:
            logger.warning("%s: this model has RANDOM weights; its answers are meaningless", self.model_name)
        if self.settings.quantized:
            logger.info("%s: this model is QUANTISED (%s); its answers differ slightly from the float model's "
                        "(the export's report.json has the agreement)", self.model_name, self.settings.quantized)
        fixed = getattr(self.task.runtime, "fixed_batch", None)
        logger.info("tsvision %s: %s %s on %s%s (%s)%s ready in %.1f s", __version__, type(self).__name__,
                    self.settings.task, self.task.runtime.name,
                    f" {self.settings.quantized}" if self.settings.quantized else "", self.task.runtime.device,
                    f", fixed batch size {fixed} (one forward pass per {fixed} images)" if fixed else "",
                    time.time() - started)

    # -- TorchServe's flow -------------------------------------------------------------------
    def handle(self, data: List[Any], context) -> List[Any]:
        """``BaseHandler.handle`` (describe, the three hooks, the HandlerTime metric); a failure
        outside every per-request guard answers each request 500 and the worker lives on."""
        try:
            return super().handle(data, context)
        except Exception:
            failure = internal_error("InternalError", "answering this batch failed")
            self.context = context
            return self.send([Response(failure.status, failure.to_body())] * len(data), data)

    @timed
    def preprocess(self, data: List[Any]) -> Batch:
        """Parse every request and prepare the images of the good ones; errors stay per request."""
        started = time.perf_counter()
        headers = [self.context.get_all_request_header(index) or {} for index in range(len(data))]
        explain = [index for index, h in enumerate(headers) if str(h.get("explain", "")).lower() == "true"]
        batch = read_batch(self.task, data, headers, {index: EXPLAINED for index in explain})
        batch.explanations = {index: explanations.read_explanation(self.task, data[index], headers[index])
                              for index in explain}
        self._record_input(batch, (time.perf_counter() - started) * 1000)
        return batch

    @timed
    def inference(self, batch: Batch) -> Batch:
        """One forward pass over every good image of the batch; then each explanation request's answer."""
        self.task.infer(batch.images)
        for index, job in batch.explanations.items():
            batch.explanations[index] = explanations.answer(self.task, job, self.model_name, self.model_version)
        return batch

    @timed
    def postprocess(self, batch: Batch) -> List[str]:
        """Each image's answer, then each request's status, headers and JSON body."""
        return self.respond(self.finish(batch))

    # -- the pieces of postprocess, for overrides ---------------------------------------------
    def finish(self, batch: Batch) -> Batch:
        """Each image's result from its slice of the model outputs (``batch.results``, result objects)
        and its JSON-ready answer (``batch.answers``, what ``batch.update`` changes)."""
        return batch.finish(self.task)

    def respond(self, batch: Batch) -> List[str]:
        """Each request's response from ``batch.answers``: status, headers, JSON body."""
        responses = batch.responses(self.task, self.model_name, self.model_version)
        for index, answered in batch.explanations.items():
            if isinstance(answered, Response):
                responses[index] = answered
        return self.send(responses, batch.rows)

    def _is_grpc(self, index: int) -> bool:
        """TorchServe's gRPC requests carry no HTTP headers: their header map holds only the inputs'
        per-part content types (dicts); every REST request has text headers (Host, Content-Length)."""
        try:
            headers = self.context.get_all_request_header(index) or {}
            return not any(isinstance(value, str) for value in headers.values())
        except Exception:  # no such request slot (a failure answered for the whole batch)
            return False

    def send(self, responses: List[Response], rows: List[Any]) -> List[Any]:
        """Set each request's status, content type and headers; return the bodies (JSON text, or a picture's bytes)."""
        bodies = []
        for index, response in enumerate(responses):
            self.context.set_response_content_type(index, response.content_type)
            self.context.set_response_header(index, "X-Batch-Size", str(len(responses)))
            if response.headline and self.settings.top_label_header:
                self.context.set_response_header(index, "X-Top-Label", quote(response.headline, safe=" '"))
            if is_stream(rows[index]) or self._is_grpc(index):
                # gRPC: this one message is the whole answer. TorchServe 0.12 closes a
                # StreamPredictions stream on "false"; without the header its frontend throws a
                # NullPointerException and restarts the worker (any client could). Predictions
                # ignores it. Never set for REST: there it turns the answer into a broken stream.
                self.context.set_response_header(index, "ts_stream_next", "false")
            try:
                body = response.body if isinstance(response.body, bytes) else json.dumps(response.body)
            except Exception:
                failure = internal_error("PostprocessError", "serialising this answer failed")
                response, body = Response(failure.status, failure.to_body()), json.dumps(failure.to_body())
                self.context.set_response_content_type(index, response.content_type)
            if response.status != 200:
                self.context.set_response_status(response.status, HTTPStatus(response.status).phrase, idx=index)
                self._count_error(index, response.body.get("type", "Error"))
            bodies.append(body)
        return bodies

    # -- describe, explain --------------------------------------------------------------------
    def describe_handle(self) -> str:
        """``GET /models/NAME?customized=true``: what this model expects and answers (``describe``, serialised once)."""
        return json.dumps(self.describe())

    def describe(self) -> dict:
        """What ``describe_handle`` answers, JSON-ready: subclasses add to it."""
        s = self.settings
        return {
            "tsvision": __version__, "handler": type(self).__name__, "task": s.task, "runtime": self.task.runtime.name,
            "device": self.task.runtime.device, "input_size": s.input_size, "resize_mode": s.resize_mode,
            "classes": len(self.task.labels), "labels": self.task.labels, "random_weights": s.random_weights,
            "quantized": s.quantized, "settings": s.to_mapping(), "description": s.description,
        }

    def _is_explain(self) -> bool:
        """Explanations are told apart per request (``preprocess``) and answered by ``explanations``
        beside the predictions of the same batch, never by ``BaseHandler.explain_handle``."""
        return False

    # -- metrics ---------------------------------------------------------------------------------
    def _record_input(self, batch: Batch, milliseconds: float) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        metrics.add_time("DecodeTime", round(milliseconds, 3), None, "ms")
        for index, request in enumerate(batch.requests):
            if not isinstance(request, RequestError):
                metrics.add_metric("ImagesPerRequest", len(request.items), "count", idx=index,
                                   metric_type=MetricTypes.GAUGE)

    def _count_error(self, index: int, kind: str) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is not None:
            metrics.add_counter("RequestErrors", 1, idx=index, dimensions=[Dimension("ErrorType", str(kind))])


class ImageClassifier(VisionHandler):
    """Classification: top-k ``{"label", "index", "score"}``."""

    task_name = "classification"


class ImageSegmenter(VisionHandler):
    """Semantic segmentation: a class-index PNG mask at the original size, with per-class counts."""

    task_name = "segmentation"


class ObjectDetector(VisionHandler):
    """Object detection: ``{"label", "index", "score", "box"}`` in original-image pixels."""

    task_name = "detection"


class KeypointDetector(VisionHandler):
    """Keypoints: detections plus ``"keypoints": [[x, y, score], ...]`` in original-image pixels;
    the describe answer adds ``"keypoints": {"names", "skeleton"}``."""

    task_name = "keypoints"

    def describe(self) -> dict:
        from tsvision.serving.tasks.keypoints import keypoint_metadata

        return {**super().describe(), "keypoints": keypoint_metadata(self.settings)}


class InstanceSegmenter(VisionHandler):
    """Instance segmentation: detection entries plus ``"mask"`` (COCO RLE or polygons) at the original size."""

    task_name = "instance_segmentation"


class ImageEmbedder(VisionHandler):
    """Embeddings: one L2-normalised vector per image (a JSON list, base64 float32/float16, or an FP32
    tensor over the Open Inference Protocol)."""

    task_name = "embedding"


def default_workers(device: str) -> int:
    """The workers TorchServe starts for an archive whose model-config names none (its
    ``default_workers_per_model``: one per core, or one per GPU); each worker's threads are its share."""
    return available_cores() if device == "cpu" else 1

"""A tsvision archive as a ``kserve.Model``, and KServe's ``ModelServer`` kept on one address.

Needs the ``kserve`` package (``pip install "tsvision[kserve]"``; ``scripts/setup.sh`` puts it in
``.venv-kserve``). :class:`ArchiveModel` runs an unpacked archive's own handler through
``LocalWorker`` (TorchServe's ``Context``); each request becomes the row TorchServe would hand the
handler, so the answers, statuses and messages are the archive's:

- v1 ``/v1/models/NAME:predict``: the JSON body as it came (``{"instances": [...]}`` is answered
  ``{"predictions": [...]}``), or raw image bytes with their content type;
- v1 ``/v1/models/NAME:explain``: the same, marked as TorchServe marks ``/explanations/NAME``;
- v2 (Open Inference Protocol) REST and gRPC: a ``BYTES`` input becomes the handler's v2 body (base64
  strings), its ``answers`` output (JSON text per image) goes back as a ``BYTES`` output (an embedding
  archive's JSON answers as one ``FP32`` ``embeddings`` tensor, images × dimensions).

KServe's Python server has no batching of its own (its ``batcher`` is a Kubernetes sidecar), so
:class:`Batcher` gathers the requests that arrive together into one handler call, up to the
archive's ``batchSize``, waiting at most its ``maxBatchDelay`` (as TorchServe does).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import GrpcException
from kserve import Model, ModelServer
from kserve.model_server import app
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters
from kserve.protocol.rest.server import RESTServer

from tsvision.tools.archive.local_worker import LocalResponse, LocalWorker
from tsvision.tools.archive.unpacked import UnpackedArchive

logger = logging.getLogger(__name__)
# The handler's HTTP status as a gRPC status code (as tsvision gateway maps them).
GRPC_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
               413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
               501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
# Handler response headers that belong to TorchServe's transport, not to the answer.
DROPPED_HEADERS = {"ts_stream_next"}
Row = Tuple[Any, Dict[str, Any]]  # (the row TorchServe would hand the handler, that request's headers)


class AnswerError(GrpcException):
    """A request the handler answered with an error: its HTTP status and JSON body over REST, a gRPC
    status with ``"<code> <type>: <message>"`` over gRPC."""

    def __init__(self, status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> None:
        self.status = status
        self.headers = dict(headers or {})
        self.body = body if isinstance(body, dict) else {"code": status, "message": str(body)}
        self.body.setdefault("error", f"{status} {self.body.get('type', 'Error')}: {self.body.get('message', '')}")
        super().__init__(self.body["error"], GRPC_STATUS.get(status, grpc.StatusCode.INTERNAL))


async def answer_error_response(_: Request, error: AnswerError) -> JSONResponse:
    """The REST answer of an :class:`AnswerError`: the handler's own status and body."""
    headers = {k: v for k, v in error.headers.items() if k.lower() != "content-type"}
    return JSONResponse(status_code=error.status, content=error.body, headers=headers)


class JsonInferRequests:
    """ASGI middleware: a v2 ``/infer`` POST without ``Inference-Header-Content-Length`` is JSON.

    tritonclient's HTTP client posts JSON-only requests without a JSON content type; KServe then takes
    the body for binary tensor data and refuses it for want of that header. Without the header the
    Open Inference Protocol body can only be JSON, so the request is passed on saying so."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/infer") \
                and not any(key == b"inference-header-content-length" for key, _ in scope["headers"]):
            headers = [(key, value) for key, value in scope["headers"] if key != b"content-type"]
            scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class Batcher:
    """Requests that arrive together, one handler call: the first waits up to ``delay_s`` for others,
    at most ``size`` per call; calls run one at a time on the model's own thread."""

    def __init__(self, run: Callable[[List[Any]], List[Any]], size: int, delay_s: float) -> None:
        self._run = run
        self.size = max(1, size)
        self.delay_s = max(0.0, delay_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsvision-model")
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None

    async def submit(self, item: Any) -> Any:
        """``item``'s answer from the call it was batched into."""
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._serve())
        future = loop.create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.delay_s
            while len(batch) < self.size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            try:
                answers = await loop.run_in_executor(self._executor, self._run, [item for item, _ in batch])
            except Exception as error:  # the handler answers per request; this is a bug: fail this batch only
                logger.exception("a batch of %d requests failed", len(batch))
                answers = [AnswerError(500, {"code": 500, "type": "InternalError",
                                             "message": f"the batch failed ({type(error).__name__})"})] * len(batch)
            for (_, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(answer)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class ArchiveModel(Model):
    """One unpacked archive served by KServe: v1 and v2 requests through the archive's handler."""

    def __init__(self, archive: UnpackedArchive, batch_size: Optional[int] = None,
                 max_batch_delay_ms: Optional[float] = None) -> None:
        super().__init__(archive.name, return_response_headers=True)
        self.archive = archive
        self.worker: Optional[LocalWorker] = None
        size = archive.batch_size if batch_size is None else batch_size
        delay = archive.max_batch_delay_ms if max_batch_delay_ms is None else max_batch_delay_ms
        self.batcher = Batcher(self._answer_rows, size, delay / 1000)

    def load(self) -> bool:
        """Initialise the handler (loads the model); the model is ready once it has."""
        self.worker = self.archive.open_worker()
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.batcher.close()
        self.ready = False

    def get_input_types(self) -> List[Dict]:
        return [{"name": "images", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> List[Dict]:
        answers = {"name": "answers", "datatype": "BYTES", "shape": [-1]}
        if (self.archive.config.get("handler") or {}).get("task") == "embedding":  # JSON answers: one FP32 tensor
            return [{"name": "embeddings", "datatype": "FP32", "shape": [-1, -1]}, answers]
        return [answers]

    async def predict(self, payload: Union[Dict, bytes, InferRequest], headers: Optional[Dict[str, str]] = None,
                      response_headers: Optional[Dict[str, str]] = None) -> Union[Dict, bytes, InferResponse]:
        return await self._ask(payload, headers, response_headers)

    async def explain(self, payload: Union[Dict, bytes],
                      headers: Optional[Dict[str, str]] = None) -> Union[Dict, bytes]:
        """v1 ``/v1/models/NAME:explain``: the handler's explanation (TorchServe's ``explain`` header),
        ``{"instances": [...]}`` answered ``{"explanations": [...]}`` (docs/explanations.md)."""
        return await self._ask(payload, headers, None, explain=True)

    async def _ask(self, payload: Union[Dict, bytes, InferRequest], headers: Optional[Dict[str, str]],
                   response_headers: Optional[Dict[str, str]],
                   explain: bool = False) -> Union[Dict, bytes, InferResponse]:
        headers = {k.lower(): v for k, v in (headers or {}).items() if isinstance(v, str)}
        if explain:
            headers["explain"] = "True"  # as TorchServe marks a request to /explanations/NAME
        if isinstance(payload, InferRequest):
            row = {"body": v2_body(payload)}
            content_type = "application/json"
        else:  # v1: JSON KServe already parsed, or a body it left alone because of its content type
            row = {"body": payload}
            content_type = "application/json" if isinstance(payload, (dict, list)) else \
                headers.get("content-type", "application/octet-stream")
        answer = await self.batcher.submit((row, {**headers, "content-type": content_type,
                                                  "body": {"content-type": content_type}}))
        if isinstance(answer, AnswerError):
            raise answer
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in DROPPED_HEADERS}
        body = answer.body if isinstance(answer.body, bytes) else json.loads(answer.body)
        if answer.status != 200:
            raise AnswerError(answer.status, body, headers)
        if response_headers is not None:
            response_headers.update(headers)
        if isinstance(payload, InferRequest):
            return v2_response(payload, body)
        return body

    def _answer_rows(self, items: Sequence[Row]) -> List[Union[LocalResponse, AnswerError]]:
        return self.worker.predict([row for row, _ in items], [headers for _, headers in items])


def v2_body(request: InferRequest) -> Dict[str, Any]:
    """The Open Inference Protocol body TorchServe would hand the handler: BYTES elements as base64 text."""
    inputs = []
    for tensor in request.inputs:
        try:
            values = tensor.as_numpy().reshape(-1).tolist()
        except Exception as error:  # a shape that does not fit its data, an unknown datatype
            raise AnswerError(400, {"code": 400, "type": "BadJson",
                                    "message": f"input {tensor.name!r}: {error}"}) from error
        values = [base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for v in values]
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": [len(values)], "data": values})
    body: Dict[str, Any] = {"id": request.id or "", "inputs": inputs}
    if request.parameters:
        body["parameters"] = to_http_parameters(request.parameters)
    return body


def v2_response(request: InferRequest, body: Dict[str, Any]) -> InferResponse:
    """The handler's v2 answer as KServe's ``InferResponse`` (BYTES outputs as the handler wrote them)."""
    outputs = []
    for output in body.get("outputs", []):
        tensor = InferOutput(output["name"], list(output["shape"]), output["datatype"], list(output["data"]),
                             parameters=output.get("parameters"))
        outputs.append(tensor)
    return InferResponse(request.id or body.get("id", ""), request.model_name, outputs,
                         model_version=body.get("model_version") or None, from_grpc=request.from_grpc,
                         use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)


class _LoopbackGRPCServer(GRPCServer):
    """KServe's gRPC server on a given host (KServe's own listens on every interface)."""

    def __init__(self, host: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._host = host

    async def start(self, max_workers: int) -> None:
        from grpc import aio  # grpc's asyncio server, as KServe's own start uses it

        options = [(f"grpc.{key}", self._kwargs[f"grpc_{key}"])
                   for key in ("max_send_message_length", "max_receive_message_length")]
        self._server = aio.server(ThreadPoolExecutor(max_workers=max_workers), options=options,
                                  interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()))
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        if self._server.add_insecure_port(f"{self._host}:{self._port}") == 0:
            raise OSError(f"cannot listen on {self._host}:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()


class LoopbackModelServer(ModelServer):
    """``kserve.ModelServer`` (one process, REST and gRPC) listening on ``host`` only."""

    def __init__(self, host: str, http_port: int, grpc_port: int, message_limit: int, **kwargs: Any) -> None:
        super().__init__(http_port=http_port, grpc_port=grpc_port, workers=1, **kwargs)
        self.host = host
        self.message_limit = message_limit

    def start(self, models: List[Model]) -> None:
        """KServe's ``ModelServer.start`` for one worker, with the listeners on ``self.host``."""
        self._register_and_check_atleast_one_model_is_ready(models)
        app.add_exception_handler(AnswerError, answer_error_response)
        app.add_middleware(JsonInferRequests)
        self._rest_server = RESTServer("kserve.model_server:app", self.dataplane, self.model_repository_extension,
                                       self.http_port, access_log_format=self.access_log_format, workers=1,
                                       grace_period=self.grace_period, event_loop=self.event_loop,
                                       timeout_keep_alive=self.timeout_keep_alive)
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            limits = {"grpc_max_send_message_length": self.message_limit,
                      "grpc_max_receive_message_length": self.message_limit}
            self._grpc_server = _LoopbackGRPCServer(self.host, self.grpc_port, self.dataplane,
                                                    self.model_repository_extension, kwargs=limits,
                                                    grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())

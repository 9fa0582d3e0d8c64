"""The ways a request reaches an archive's handler, behind one interface, so that a test is written
once and runs over each (tests/e2e/conftest.py's ``transport`` fixture):

- ``local``: in-process, no TorchServe: the archive's handler class through ``LocalWorker``
  (TorchServe's own ``Context``) on the files the session's archive was built from; "together"
  is one batch (one ``predict(rows)`` call).
- ``rest``: TorchServe's inference API: ``/predictions/MODEL``, or ``/invocations?model_name=MODEL``
  with the options as query parameters (TorchServe 0.12 drops the query string of ``/predictions``),
  or multipart form fields when files are sent.
- ``grpc``: TorchServe's gRPC ``Predictions``: the body as the input ``data``, each option an input
  of its own (our error body, which the gRPC frontend delivers as a successful call, becomes the
  error's status).
- ``oip``: the Open Inference Protocol (KServe v2) over REST: the image as a BYTES tensor, the
  options as ``parameters``; the ``answers``, ``picture`` or ``error`` output becomes the answer.

Each answers an ``Answer``. What a protocol cannot express is in ``carries``; a test calls
``transport.need(...)`` and is skipped, with the reason, where the protocol lacks it. Served
requests "together" are released at once (``tests.helpers.all_at_once``) so TorchServe batches them.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

import pytest
import requests

from tests.helpers import BACKENDS, EXAMPLE_HANDLER, TASKS, TOY_SETTINGS, all_at_once

# What a transport can carry (``Transport.carries``).
CONTENT_TYPE = "a content type per request"
JSON_BODY = "a JSON body"
FORM = "multipart form data"
HEADERS = "HTTP headers (Accept; X-Batch-Size and Content-Type back)"
ONE_BATCH = "requests sent together are exactly one batch"
EXPLAIN = "the explanations call"
DESCRIBE = "the describe call"
TRANSPORTS = ("local", "rest", "grpc", "oip")


@dataclass
class Answer:
    """One request's answer: its status, its body (parsed JSON, or bytes for a picture), its headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """One request: ``body`` bytes (or a JSON-ready value, sent as ``application/json``), options
    (typed values: each transport writes them its own way), request headers, or multipart ``files``
    (field name: (bytes, content type))."""

    body: Any = b""
    content_type: str = "application/octet-stream"
    options: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    files: Optional[Mapping[str, Tuple[bytes, str]]] = None

    @property
    def data(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()

    @property
    def media_type(self) -> str:
        return self.content_type if isinstance(self.body, bytes) else "application/json"


def text_option(value: Any) -> str:
    """An option as a query parameter, form field or gRPC input writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def error_body(body: Any) -> Any:
    """Our error body (code, type, message) out of an answer that carries more (the OIP envelope)."""
    return {k: body[k] for k in ("code", "type", "message")} if isinstance(body, dict) and "type" in body else body


class Transport:
    """One way to send requests to the session's archives."""

    name = ""
    carries: FrozenSet[str] = frozenset()
    server: Any = None  # the session's TorchServe, for the served transports

    def need(self, *capabilities: str) -> None:
        """Skip the test where this protocol cannot express what it sends."""
        missing = [c for c in capabilities if c not in self.carries]
        if missing:
            pytest.skip(f"{self.name} cannot carry {', '.join(missing)}")

    def send(self, model: str, body: Any = b"", content_type: str = "application/octet-stream",
             options: Optional[Mapping[str, Any]] = None, headers: Optional[Mapping[str, str]] = None,
             files: Optional[Mapping[str, Tuple[bytes, str]]] = None) -> Answer:
        """One request on its own."""
        return self.together(model, [Request(body, content_type, options or {}, headers or {}, files)])[0]

    def together(self, model: str, batch: Sequence[Request]) -> List[Answer]:
        """Requests sent at once (served: released together so TorchServe batches them)."""
        return all_at_once(lambda request: self.one(model, request), list(batch))

    def one(self, model: str, request: Request) -> Answer:
        raise NotImplementedError

    def explain(self, model: str, data: bytes) -> Answer:
        raise NotImplementedError

    def describe(self, model: str) -> dict:
        raise NotImplementedError

    def metric_names(self, model: str) -> Set[str]:
        """The metrics recorded for the model so far."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- local: the handler in-process --------------------------------------------------------------
def worker_value(data: bytes, content_type: str) -> Any:
    """A body as TorchServe's worker hands it to the handler: JSON parsed, text decoded, else bytes."""
    if content_type == "application/json":
        try:
            return json.loads(data)
        except ValueError:
            return data
    if content_type.startswith("text/"):
        return data.decode("utf-8")
    return data


class LocalTransport(Transport):
    """The archives' handlers in-process (``LocalWorker``), each built once, from the files the
    session's archives were built from (tests/e2e/conftest.py's ``model_store``)."""

    name = "local"
    carries = frozenset({CONTENT_TYPE, JSON_BODY, FORM, HEADERS, ONE_BATCH, EXPLAIN, DESCRIBE})

    def __init__(self, sources: Callable[[str], Tuple[type, Path, str, dict]]) -> None:
        self._sources = sources
        self._workers: Dict[str, Any] = {}

    def worker(self, model: str) -> Any:
        from tsvision.tools.archive.local_worker import LocalWorker

        if model not in self._workers:
            handler, folder, model_file, config = self._sources(model)
            self._workers[model] = LocalWorker(handler, folder, model_file, config, name=model, version="1.0")
        return self._workers[model]

    @staticmethod
    def row(request: Request) -> Tuple[dict, dict]:
        """The row and headers TorchServe's worker hands the handler for this request."""
        options = {k: text_option(v) for k, v in request.options.items()}
        if request.files is not None:
            row = {name: data for name, (data, _) in request.files.items()}
            headers = {name: {"content-type": kind} for name, (_, kind) in request.files.items()}
        else:
            row = {"body": worker_value(request.data, request.media_type)}
            headers = {"body": {"content-type": request.media_type}}
        return {**row, **options}, {**headers, **request.headers}

    def together(self, model: str, batch: Sequence[Request]) -> List[Answer]:
        rows, headers = zip(*(self.row(request) for request in batch))
        return [self._answer(r) for r in self.worker(model).predict(list(rows), list(headers))]

    def one(self, model: str, request: Request) -> Answer:
        return self.together(model, [request])[0]

    @staticmethod
    def _answer(response) -> Answer:
        picture = response.headers.get("content-type", "").startswith("image/")
        return Answer(response.status, response.body if picture else response.json(), response.headers)

    def explain(self, model: str, data: bytes) -> Answer:
        response = self.worker(model).predict([{"body": data}], [{"body": {"content-type": "image/jpeg"},
                                                                  "explain": "True"}])[0]
        return self._answer(response)

    def describe(self, model: str) -> dict:
        return json.loads(self.worker(model).predict([{"body": b""}], [{"describe": "True"}])[0].body)

    def metric_names(self, model: str) -> Set[str]:
        return {name for by_type in self.worker(model).context.metrics.cache.values() for name in by_type}


def local_sources(exports: Path, toy_exports: Path, folder: Path) -> Callable[[str], Tuple[type, Path, str, dict]]:
    """Model name -> (handler class, model folder, model file, model config) for the session's archives
    (``STARTED_WITH``): the same export folders, settings, labels and handler files."""
    from tsvision.tools.archive.local_worker import load_handler_class
    from tsvision.tools.archive.package import default_handler

    def source(model: str) -> Tuple[type, Path, str, dict]:
        defaults = {f"{task}_{backend}": (task, backend) for task in TASKS for backend in BACKENDS}
        defaults["classification_batched"] = ("classification", "onnx")
        toys = {f"toy_{task}_{backend}": (task, backend)
                for task in ("detection", "segmentation") for backend in BACKENDS}
        if model in defaults:
            task, backend = defaults[model]
            settings = json.loads((exports / task / "settings.json").read_text())
            return (load_handler_class(default_handler(task, folder)), exports / task, BACKENDS[backend],
                    {"batchSize": 8, "handler": settings})
        if model in toys:
            task, backend = toys[model]
            settings = {"task": task, "labels": "labels.json", **TOY_SETTINGS[task]}
            return (load_handler_class(default_handler(task, folder)), toy_exports / task, BACKENDS[backend],
                    {"batchSize": 8, "handler": settings})
        if model in ("person_counter", "cat_counter"):  # the user's handler file, class 1 "person" or "cat"
            own = folder / model
            own.mkdir(parents=True, exist_ok=True)
            shutil.copy(toy_exports / "detection" / "model.onnx", own / "model.onnx")
            (own / "labels.json").write_text(json.dumps(["background", model.removesuffix("_counter")]))
            settings = {"task": "detection", "labels": "labels.json", **TOY_SETTINGS["detection"], "profile": True}
            return load_handler_class(EXAMPLE_HANDLER), own, "model.onnx", {"batchSize": 8, "handler": settings}
        raise KeyError(f"no local source for {model!r}")

    return source


# -- served: the session's TorchServe -----------------------------------------------------------
class ServedTransport(Transport):
    """What the served transports share: the session's TorchServe."""

    def __init__(self, server) -> None:
        self.server = server

    def explain(self, model: str, data: bytes) -> Answer:
        response = requests.post(f"{self.server.inference_url}/explanations/{model}", data=data, timeout=60,
                                 headers={"Content-Type": "image/jpeg", **self.server.headers("inference")})
        return http_answer(response)

    def describe(self, model: str) -> dict:
        response = requests.get(f"{self.server.management_url}/models/{model}?customized=true",
                                headers=self.server.headers("management"), timeout=60)
        assert response.status_code == 200, response.text
        about = response.json()[0]["customizedMetadata"]
        return json.loads(about) if isinstance(about, str) else about  # the frontend parses JSON text

    def metric_names(self, model: str) -> Set[str]:
        return {line.split("{")[0] for line in self.metric_lines(model)}

    def metric_lines(self, model: str) -> List[str]:
        """The Prometheus endpoint's lines for the model."""
        text = requests.get(f"{self.server.metrics_url}/metrics", timeout=30, verify=self.server.verify).text
        return [line for line in text.splitlines() if f'ModelName="{model}"' in line]


def http_answer(response: requests.Response) -> Answer:
    kind = response.headers.get("content-type", "")
    if kind.startswith("image/"):
        return Answer(response.status_code, response.content, response.headers)
    try:
        return Answer(response.status_code, response.json(), response.headers)
    except ValueError:
        return Answer(response.status_code, response.text, response.headers)


class RestTransport(ServedTransport):
    name = "rest"
    carries = frozenset({CONTENT_TYPE, JSON_BODY, FORM, HEADERS, EXPLAIN, DESCRIBE})

    def one(self, model: str, request: Request) -> Answer:
        server = self.server
        headers = {**server.headers("inference"), **request.headers}
        options = {k: text_option(v) for k, v in request.options.items()}
        if request.files is not None:  # the options as form fields
            files = {name: (f"{name}.bin", data, kind) for name, (data, kind) in request.files.items()}
            response = requests.post(f"{server.inference_url}/predictions/{model}", data=options, files=files,
                                     headers=headers, timeout=60)
        elif options:  # the options as query parameters of /invocations
            response = requests.post(f"{server.inference_url}/invocations", params={"model_name": model, **options},
                                     data=request.data, headers={**headers, "Content-Type": request.media_type},
                                     timeout=60)
        else:
            response = requests.post(f"{server.inference_url}/predictions/{model}", data=request.data,
                                     headers={**headers, "Content-Type": request.media_type}, timeout=60)
        return http_answer(response)


class GrpcTransport(ServedTransport):
    """gRPC ``Predictions``: no content type, no headers either way; a JSON body is sent as its
    bytes (the handler reads JSON that arrives without a JSON content type)."""

    name = "grpc"
    carries = frozenset({JSON_BODY})

    def __init__(self, server) -> None:
        from tsvision.tools.clients.grpc_client import GrpcClient

        super().__init__(server)
        self.client = GrpcClient(f"127.0.0.1:{server.properties['grpc_inference_port']}",
                                 f"127.0.0.1:{server.properties['grpc_management_port']}",
                                 server.workdir / "key_file.json")

    def one(self, model: str, request: Request) -> Answer:
        from tsvision.tools.clients.grpc_client import PredictionError

        pb = self.client.stubs.inference_pb2
        inputs = {"data": request.data, **{k: text_option(v).encode() for k, v in request.options.items()}}
        response = self.client.inference.Predictions(pb.PredictionsRequest(model_name=model, input=inputs),
                                                     metadata=self.client._metadata["inference"], timeout=60)
        try:
            answer = json.loads(response.prediction)
        except ValueError:  # not JSON: the picture
            return Answer(200, bytes(response.prediction))
        if isinstance(answer, dict) and set(answer) == {"code", "type", "message"}:
            error = PredictionError(answer["code"], answer["type"], answer["message"])
            return Answer(error.code, {"code": error.code, "type": error.kind, "message": error.message})
        return Answer(200, answer)

    def close(self) -> None:
        self.client.close()


class OipTransport(ServedTransport):
    """The Open Inference Protocol over REST: one image as a BYTES tensor, the options as
    ``parameters`` (typed, as JSON keeps them); no content type, no JSON body of one's own."""

    name = "oip"
    carries: FrozenSet[str] = frozenset()

    def one(self, model: str, request: Request) -> Answer:
        body: Dict[str, Any] = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                            "data": [base64.b64encode(request.data).decode("ascii")]}]}
        if request.options:
            body["parameters"] = dict(request.options)
        response = requests.post(f"{self.server.inference_url}/v2/models/{model}/infer", json=body, timeout=60,
                                 headers=self.server.headers("inference"))
        if response.status_code != 200:  # our error body in the v2 envelope, or the frontend's refusal
            return Answer(response.status_code, error_body(http_answer(response).body), response.headers)
        answer = response.json()
        [output] = answer["outputs"]
        assert output["datatype"] == "BYTES" and output["shape"] == [1], output
        if output["name"] == "picture":
            return Answer(200, base64.b64decode(output["data"][0]), response.headers)
        assert output["name"] == "answers", output
        return Answer(200, json.loads(output["data"][0]), response.headers)


def served_transport(name: str, server) -> Transport:
    return {"rest": RestTransport, "grpc": GrpcTransport, "oip": OipTransport}[name](server)

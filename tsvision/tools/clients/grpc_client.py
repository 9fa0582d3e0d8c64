"""A gRPC client for TorchServe: inference, the Open Inference Protocol, and management.

Token metadata and TLS are supported; message limits are raised on the client (TorchServe's
server takes its inbound limit from ``max_request_size``, 25 MB in our config).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional

import grpc
import numpy as np

from tsvision.serving.payloads import STREAM_FIELD
from tsvision.tools.clients.grpc_stubs import load
from tsvision.tools.serve.keys import read_key

# This client's own channel limit, above the server's so that the server's refusal is what callers see.
DEFAULT_MESSAGE_LIMIT = 64 * 1024 * 1024
SERVER_REQUEST_LIMIT = 26214400  # TorchServe's max_request_size in config.properties (it limits gRPC too)


def decode_oip_bytes(element: bytes) -> Any:
    """An answer from a BYTES output over gRPC. TorchServe serialises each BYTES element as JSON
    text, so a string element arrives with its quotes: decode until a non-string remains."""
    value: Any = element.decode("utf-8")
    for _ in range(2):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                break
    return value


class PredictionError(RuntimeError):
    """A request the handler (or the size limit) refused: ``code``, ``kind``, ``message``."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(f"{code} {kind}: {message}")
        self.code, self.kind, self.message = code, kind, message


def _answer(response: Any) -> Any:
    """A ``PredictionResponse``'s JSON answer; our error body becomes a ``PredictionError``."""
    answer = json.loads(response.prediction)
    if isinstance(answer, dict) and set(answer) == {"code", "type", "message"}:
        raise PredictionError(answer["code"], answer["type"], answer["message"])
    return answer


class GrpcClient:
    def __init__(self, inference: str = "127.0.0.1:7070", management: str = "127.0.0.1:7071",
                 key_file: Optional[Path] = None, root_certificate: Optional[Path] = None,
                 message_limit: int = DEFAULT_MESSAGE_LIMIT, timeout: float = 120,
                 max_request_size: int = SERVER_REQUEST_LIMIT) -> None:
        self.stubs = load()
        self.max_request_size = max_request_size  # the server's limit; larger messages are reset unexplained
        self.timeout = timeout
        options = [("grpc.max_send_message_length", message_limit), ("grpc.max_receive_message_length", message_limit)]
        keys = {api: read_key(key_file, api) for api in ("inference", "management")}
        self._metadata = {api: ([("authorization", f"Bearer {key}")] if key else []) for api, key in keys.items()}

        def channel(address: str) -> grpc.Channel:
            if root_certificate:
                credentials = grpc.ssl_channel_credentials(Path(root_certificate).read_bytes())
                return grpc.secure_channel(address, credentials, options=options)
            return grpc.insecure_channel(address, options=options)

        s = self.stubs
        self._inference_channel, self._management_channel = channel(inference), channel(management)
        self.inference = s.inference_pb2_grpc.InferenceAPIsServiceStub(self._inference_channel)
        self.open_inference = s.open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(self._inference_channel)
        self.management = s.management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)

    # -- inference -------------------------------------------------------------------------
    def ping(self) -> str:
        empty = self.stubs.inference_pb2.google_dot_protobuf_dot_empty__pb2.Empty()
        return json.loads(self.inference.Ping(empty, metadata=self._metadata["inference"],
                                              timeout=self.timeout).health)["status"]

    def predict(self, model: str, image: bytes, version: str = "") -> Any:
        """The JSON answer for one image; ``PredictionError`` for the handler's refusal.

        TorchServe's gRPC frontend drops the handler's per-request status: an error arrives as
        a successful call whose prediction is our error body, so it is recognised here."""
        self._check_size(image)
        request = self.stubs.inference_pb2.PredictionsRequest(model_name=model, model_version=version,
                                                              input={"data": image})
        response = self.inference.Predictions(request, metadata=self._metadata["inference"], timeout=self.timeout)
        return _answer(response)

    def stream_predict(self, model: str, image: bytes, version: str = "") -> Iterator[Any]:
        """TorchServe's ``StreamPredictions``: yields the answer's messages as they arrive. A vision
        answer is complete at once, so our handlers send one message and close the stream."""
        self._check_size(image)
        request = self.stubs.inference_pb2.PredictionsRequest(model_name=model, model_version=version,
                                                              input={"data": image, STREAM_FIELD: b"1"})
        for response in self.inference.StreamPredictions(request, metadata=self._metadata["inference"],
                                                         timeout=self.timeout):
            yield _answer(response)

    def _check_size(self, *images: bytes) -> None:
        size = sum(len(image) for image in images)
        if size > self.max_request_size:
            raise PredictionError(413, "RequestTooLarge", f"{size} bytes of images is over the server's limit of "
                                  f"{self.max_request_size} bytes (max_request_size in config.properties)")

    def infer_v2(self, model: str, images: List[bytes], version: str = "") -> List[Any]:
        """Open Inference Protocol ``ModelInfer``: input ``images`` (BYTES: the image files), output ``answers``
        (or an embedding model's FP32 ``embeddings``: a list of numbers per image)."""
        self._check_size(*images)
        pb = self.stubs.open_inference_grpc_pb2
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="BYTES", shape=[len(images)],
            contents=pb.InferTensorContents(bytes_contents=list(images)))  # TorchServe base64-encodes them itself
        request = pb.ModelInferRequest(model_name=model, model_version=version, id=str(uuid.uuid4()), inputs=[tensor])
        response = self.open_inference.ModelInfer(request, metadata=self._metadata["inference"], timeout=self.timeout)
        tensors = [o for o in response.outputs if o.datatype == "FP32"]
        if tensors and not any(o.name == "answers" for o in response.outputs):  # an embedding model's "embeddings"
            index = list(response.outputs).index(tensors[0])
            flat = (np.frombuffer(response.raw_output_contents[index], "<f4").tolist()
                    if index < len(response.raw_output_contents) else list(tensors[0].contents.fp32_contents))
            rows = int(tensors[0].shape[0])
            width = len(flat) // rows if rows else 0
            return [flat[i * width:(i + 1) * width] for i in range(rows)]
        outputs = {o.name: [decode_oip_bytes(e) for e in o.contents.bytes_contents] for o in response.outputs}
        if "answers" not in outputs:
            error = (outputs.get("error") or [{}])[0]
            raise PredictionError(error.get("code", 500), error.get("type", "Unknown"),
                                  error.get("message", f"no answers in {response}"))
        return outputs["answers"]

    # -- management ----------------------------------------------------------------------
    def _manage(self, method: str, **fields) -> Any:
        request = getattr(self.stubs.management_pb2, f"{method}Request")(**fields)
        response = getattr(self.management, method)(request, metadata=self._metadata["management"],
                                                    timeout=self.timeout)
        try:
            return json.loads(response.msg)
        except ValueError:
            return response.msg

    def list_models(self) -> Any:
        return self._manage("ListModels", limit=100)

    def describe(self, model: str, version: str = "") -> Any:
        return self._manage("DescribeModel", model_name=model, model_version=version)

    def register(self, archive: str, workers: int = 1) -> Any:
        return self._manage("RegisterModel", url=archive, initial_workers=workers, synchronous=True)

    def scale(self, model: str, version: str, workers: int) -> Any:
        return self._manage("ScaleWorker", model_name=model, model_version=version, min_worker=workers,
                            max_worker=workers, synchronous=True)

    def set_default(self, model: str, version: str) -> Any:
        return self._manage("SetDefault", model_name=model, model_version=version)

    def unregister(self, model: str, version: str) -> Any:
        return self._manage("UnregisterModel", model_name=model, model_version=version)

    def close(self) -> None:
        self._inference_channel.close()
        self._management_channel.close()

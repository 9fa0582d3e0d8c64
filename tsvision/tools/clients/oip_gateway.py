"""A KServe v2 gRPC gateway so standard clients (tritonclient, KServe's) reach TorchServe 0.12.

    tsvision gateway --listen 127.0.0.1:8001 --torchserve 127.0.0.1:7070

TorchServe serves the Open Inference Protocol over gRPC under its own proto package
(``org.pytorch.serve.grpc.openinference.GRPCInferenceService``) and reads only the typed
``contents`` of a ``ModelInfer`` request. Standard clients call ``inference.GRPCInferenceService``
and send tensors as ``raw_input_contents``, so against TorchServe alone they get UNIMPLEMENTED.
The messages are wire-compatible; the gateway only

- forwards each call to TorchServe's service name (metadata such as the token and the deadline
  pass through, TorchServe's status codes come back unchanged),
- moves ``raw_input_contents`` into typed contents (BYTES elements are length-prefixed),
- gives ``BYTES`` outputs back as the handler wrote them (TorchServe's gRPC frontend wraps each
  one in JSON quotes), so an answer is the same text as over REST,
- gives a numeric output (an embedding model's FP32 ``embeddings``) as ``raw_output_contents``, as Triton does,
- turns tsvision's ``error`` output into a gRPC error with the handler's status and message.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
from concurrent import futures
from typing import List, Optional

import grpc
import numpy as np

from tsvision.tools.clients.grpc_client import SERVER_REQUEST_LIMIT
from tsvision.tools.clients.grpc_stubs import load
from tsvision.tools.command import CommandError, entry_point, host_port
from tsvision.tools.command import parser as command_parser

STANDARD_SERVICE = "inference.GRPCInferenceService"
TORCHSERVE_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"
DEFAULT_MESSAGE_LIMIT = SERVER_REQUEST_LIMIT  # the gateway passes on what TorchServe accepts
# Typed contents field and numpy dtype for each KServe v2 datatype.
TYPED_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_), "INT8": ("int_contents", np.int8), "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32), "INT64": ("int64_contents", np.int64), "UINT8": ("uint_contents", np.uint8),
    "UINT16": ("uint_contents", np.uint16), "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64), "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents",
                                                                                              np.float64),
}
# The handler's HTTP status as a gRPC status code.
GRPC_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
               413: grpc.StatusCode.RESOURCE_EXHAUSTED,
               415: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}
NO_DEADLINE = 1e9  # seconds; grpc reports a call without a deadline as ~9e18 s remaining
# Transport headers that must not be forwarded as call metadata.
HOP_BY_HOP = {"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout"}


class GatewayError(ValueError):
    """A request the gateway cannot translate (an unsupported datatype, malformed raw contents)."""


def split_raw_bytes(raw: bytes) -> List[bytes]:
    """The elements of a raw BYTES tensor: each is a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise GatewayError("raw BYTES contents end inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise GatewayError("raw BYTES contents are shorter than an element's declared length")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def raw_contents(output) -> bytes:
    """An output tensor's typed contents as raw bytes: numbers little-endian, BYTES elements length-prefixed."""
    if output.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in output.contents.bytes_contents)
    field, dtype = TYPED_CONTENTS[output.datatype]
    return np.asarray(getattr(output.contents, field), dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def unquote(element: bytes) -> bytes:
    """Undo the JSON quoting TorchServe's gRPC frontend adds to each BYTES output element."""
    try:
        value = json.loads(element)
    except ValueError:
        return element
    return value.encode("utf-8") if isinstance(value, str) else element


class OipGateway:
    """The gateway: a gRPC server on ``listen`` forwarding to TorchServe's gRPC inference port."""

    def __init__(self, listen: str, torchserve: str, message_limit: int = DEFAULT_MESSAGE_LIMIT,
                 threads: int = 16) -> None:
        self.pb = load().open_inference_grpc_pb2
        options = [("grpc.max_send_message_length", message_limit), ("grpc.max_receive_message_length", message_limit)]
        self._channel = grpc.insecure_channel(torchserve, options=options)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
        self._server.add_generic_rpc_handlers([_Forwarder(self)])
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")

    def start(self) -> "OipGateway":
        self._server.start()
        return self

    def stop(self, grace: float = 5) -> None:
        self._server.stop(grace).wait()
        self._channel.close()

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if method == "ModelInfer":
            request = self.translate_request(request, context)
        metadata = [(k, v) for k, v in context.invocation_metadata()
                    if not k.startswith(":") and k.lower() not in HOP_BY_HOP]
        call = self._channel.unary_unary(f"/{TORCHSERVE_SERVICE}/{method}")
        remaining = context.time_remaining()  # about 9e18 s when the client set no deadline
        try:
            response = call(request, metadata=metadata, timeout=remaining if remaining < NO_DEADLINE else None)
        except grpc.RpcError as error:
            context.abort(error.code(), error.details() or "")
        return self.translate_response(response, context) if method == "ModelInfer" else response

    def translate_request(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = self.pb.ModelInferRequest.FromString(data)
        if not request.raw_input_contents:
            return data
        if len(request.raw_input_contents) != len(request.inputs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents must hold one entry per input")
        try:
            for tensor, raw in zip(request.inputs, request.raw_input_contents):
                if tensor.datatype == "BYTES":
                    tensor.contents.bytes_contents.extend(split_raw_bytes(raw))
                elif tensor.datatype in TYPED_CONTENTS:
                    field, dtype = TYPED_CONTENTS[tensor.datatype]
                    getattr(tensor.contents, field).extend(np.frombuffer(raw, dtype=dtype).tolist())
                else:
                    raise GatewayError(f"datatype {tensor.datatype} of input {tensor.name!r} is not supported")
        except (GatewayError, ValueError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        del request.raw_input_contents[:]
        return request.SerializeToString()

    def translate_response(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        response = self.pb.ModelInferResponse.FromString(data)
        for output in response.outputs:
            if output.datatype == "BYTES":
                elements = [unquote(e) for e in output.contents.bytes_contents]
                del output.contents.bytes_contents[:]
                output.contents.bytes_contents.extend(elements)
        if any(o.datatype != "BYTES" and o.datatype in TYPED_CONTENTS for o in response.outputs) \
                and not response.raw_output_contents:
            # A numeric tensor (an embedding model's FP32 "embeddings"): as raw_output_contents, the form Triton
            # answers and the only numeric one tritonclient reads.
            for output in response.outputs:
                response.raw_output_contents.append(raw_contents(output))
                output.ClearField("contents")
        names = {o.name for o in response.outputs}
        if "error" in names and "answers" not in names:
            error = next(o for o in response.outputs if o.name == "error")
            body = json.loads(error.contents.bytes_contents[0]) if error.contents.bytes_contents else {}
            code = int(body.get("code", 500))
            context.abort(GRPC_STATUS.get(code, grpc.StatusCode.INTERNAL),
                          f"{code} {body.get('type', 'Error')}: {body.get('message', 'the model failed')}")
        return response.SerializeToString()


class _Forwarder(grpc.GenericRpcHandler):
    """Routes every unary ``inference.GRPCInferenceService`` method to the gateway (bytes in, bytes out)."""

    def __init__(self, gateway: OipGateway) -> None:
        self._gateway = gateway

    def service(self, details: grpc.HandlerCallDetails) -> Optional[grpc.RpcMethodHandler]:
        service, _, method = details.method.lstrip("/").partition("/")
        if service != STANDARD_SERVICE or method == "ModelStreamInfer":
            return None  # UNIMPLEMENTED, as TorchServe has no such method
        def behaviour(request, context):
            return self._gateway.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(behaviour)


@entry_point("tsvision gateway")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision gateway", __doc__)
    parser.add_argument("--listen", type=host_port, default="127.0.0.1:8001",
                        help="address for standard KServe v2 gRPC clients")
    parser.add_argument("--torchserve", type=host_port, default="127.0.0.1:7070",
                        help="TorchServe's gRPC inference address")
    parser.add_argument("--message-limit", type=int, default=DEFAULT_MESSAGE_LIMIT,
                        help="largest message in bytes, both ways")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    try:  # said here in one line; gRPC's own refusal comes with a C-core log line
        with socket.create_server((host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
        gateway = OipGateway(args.listen, args.torchserve, args.message_limit).start()
    except (OSError, RuntimeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise CommandError(f"--listen {args.listen}: cannot listen there ({reason})") from error
    print(f"KServe v2 gRPC on {args.listen.rsplit(':', 1)[0]}:{gateway.port} -> TorchServe {args.torchserve}",
          flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    gateway.stop()
    return 0


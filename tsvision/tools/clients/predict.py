"""Send an image to a model over REST, gRPC or the Open Inference Protocol; print the answer.

    tsvision predict --model classification_onnx --image photo.jpg [--protocol rest|grpc|grpc-stream|oip-rest|oip-grpc]
"""

from __future__ import annotations

import base64
import json
from typing import Any, List, Optional, Union

import requests

from tsvision.tools.command import CommandError, describe, entry_point, existing_file, host_port
from tsvision.tools.command import parser as command_parser
from tsvision.tools.serve.keys import KEY_FILE_HELP, checked_key, key_file_or_default, token_hint

PROTOCOLS = ("rest", "grpc", "grpc-stream", "oip-rest", "oip-grpc")


class Refused(RuntimeError):
    """The server answered, with an HTTP error ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _compact(text: str) -> str:
    """TorchServe's pretty-printed JSON error body on one line."""
    try:
        return json.dumps(json.loads(text))
    except ValueError:
        return text.strip()


def post_image(url: str, model: str, image: bytes, key: Optional[str] = None, version: str = "",
               verify: Union[bool, str] = True, timeout: float = 120) -> requests.Response:
    """POST the image bytes to ``/predictions/MODEL[/VERSION]``. ``verify``: True, or the path of the CA
    certificate that signed an https server's certificate (passed per request: REQUESTS_CA_BUNDLE would win)."""
    headers = {"Content-Type": "application/octet-stream", **({"Authorization": f"Bearer {key}"} if key else {})}
    return requests.post(f"{url.rstrip('/')}/predictions/{model}" + (f"/{version}" if version else ""), data=image,
                         headers=headers, timeout=timeout, verify=verify)


def predict_rest(url: str, model: str, image: bytes, key: Optional[str] = None, version: str = "",
                 verify: Union[bool, str] = True) -> Any:
    """The answer's JSON; anything but 200 raises ``RuntimeError`` with the server's message."""
    response = post_image(url, model, image, key, version, verify)
    if response.status_code != 200:
        raise Refused(response.status_code, _compact(response.text))
    return response.json()


def predict_oip_rest(url: str, model: str, images: List[bytes], key: Optional[str] = None, version: str = "",
                     verify: Union[bool, str] = True) -> List[Any]:
    """KServe v2 over REST: input ``images`` BYTES (base64), output ``answers`` (JSON text per image), or an
    embedding model's FP32 ``embeddings`` tensor (a list of numbers per image)."""
    body = {"inputs": [{"name": "images", "shape": [len(images)], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode("ascii") for image in images]}]}
    path = f"{url}/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = requests.post(path, json=body, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=120,
                             verify=verify)
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise Refused(response.status_code, _compact(str(message)))
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    if "answers" not in outputs and outputs:  # a tensor output (an embedding model's FP32 "embeddings"): its rows
        output = next(iter(outputs.values()))
        return tensor_rows(output["data"], output["shape"])
    return [json.loads(text) for text in outputs["answers"]["data"]]


def tensor_rows(data: List[Any], shape: List[int]) -> List[List[Any]]:
    """An OIP output tensor's flat ``data`` as one list per image (its first axis)."""
    count = int(shape[0]) if shape else 1
    width = len(data) // count if count else 0
    return [list(data[i * width:(i + 1) * width]) for i in range(count)]


@entry_point("tsvision predict")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision predict", __doc__)
    parser.add_argument("--model", required=True, help="model name in TorchServe")
    parser.add_argument("--image", type=existing_file, required=True, help="image file to send (JPEG, PNG, ...)")
    parser.add_argument("--version", default="", help="model version (default: the model's default version)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="rest", help="how to send it")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="REST inference address")
    parser.add_argument("--grpc", type=host_port, default="127.0.0.1:7070", help="gRPC inference address")
    parser.add_argument("--key-file", type=existing_file, help=KEY_FILE_HELP)
    parser.add_argument("--tls-cert", type=existing_file,
                        help="CA certificate that signed the server's (https and gRPC over TLS)")
    args = parser.parse_args(argv)
    image = args.image.read_bytes()
    key_file = key_file_or_default(args.key_file)
    key = checked_key(key_file)
    # Passed per request: REQUESTS_CA_BUNDLE would override a Session's verify (psf/requests#3829).
    verify: Union[bool, str] = str(args.tls_cert) if args.tls_cert else True
    try:
        if args.protocol == "rest":
            answer = predict_rest(args.url, args.model, image, key, args.version, verify)
        elif args.protocol == "oip-rest":
            answer = predict_oip_rest(args.url, args.model, [image], key, args.version, verify)[0]
        else:
            # grpc, and the stubs generated on first use, only for the gRPC protocols (REST starts faster)
            import grpc

            from tsvision.tools.clients.grpc_client import GrpcClient

            client = GrpcClient(args.grpc, key_file=key_file, root_certificate=args.tls_cert)
            try:
                if args.protocol == "grpc":
                    answer = client.predict(args.model, image, args.version)
                elif args.protocol == "grpc-stream":
                    answer = list(client.stream_predict(args.model, image, args.version))[-1]
                else:
                    answer = client.infer_v2(args.model, [image], args.version)[0]
            except grpc.RpcError as error:
                said = describe(error)
                raise CommandError(f"{args.grpc} ({args.protocol}): {said}{token_hint(said, key_file)}") from error
    except RuntimeError as error:  # the server's refusal (Refused, grpc_client.PredictionError): its status and message
        raise CommandError(f"{args.url if args.protocol.endswith('rest') else args.grpc} ({args.protocol}), model "
                           f"{args.model}: {error}{token_hint(str(error), key_file)}") from error
    print(json.dumps(answer, indent=2))
    return 0


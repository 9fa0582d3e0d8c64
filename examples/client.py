"""A small client for the tsvision models on TorchServe; needs only ``requests``
(plus scikit-image for the default photo).

    python -m examples.client --model classification_onnx --image photo.jpg [--draw out.png]

``--draw`` saves the picture the server draws (the same image sent with ``Accept: image/png``).

The answer is printed as JSON on stdout; notes and errors go to stderr, so
``python -m examples.client ... > answer.json`` keeps a file that ``examples.draw`` can read.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import requests

from tsvision.tools.clients.predict import post_image
from tsvision.tools.serve.keys import read_key

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_KEY_FILE = "key_file.json"
TASKS = ("classification", "segmentation", "detection")
RANDOM_WEIGHTS_NOTE = "note: the default archives have random weights; answers show the format, not knowledge"


def read_token(key_file: str | Path) -> Optional[str]:
    """The inference token from TorchServe's key_file.json, or None if the file does not exist."""
    return read_key(key_file, "inference")


def predict(url: str, model: str, image_bytes: bytes, token: Optional[str] = None,
            timeout: float = 60) -> Tuple[int, Any]:
    """POST the image bytes to ``{url}/predictions/{model}``; returns (HTTP status, decoded JSON)."""
    response = post_image(url, model, image_bytes, token, timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:  # not JSON: e.g. a proxy's HTML error page
        return response.status_code, {"code": response.status_code, "type": "NotJson", "message": response.text[:500]}


def picture(url: str, model: str, image_bytes: bytes, token: Optional[str] = None, media_type: str = "image/png",
            timeout: float = 60) -> bytes:
    """The server's picture of its answer (``Accept: image/png`` or ``image/jpeg``); RuntimeError if refused."""
    headers = {"Content-Type": "application/octet-stream", "Accept": media_type,
               **({"Authorization": f"Bearer {token}"} if token else {})}
    response = requests.post(f"{url.rstrip('/')}/predictions/{model}", data=image_bytes, headers=headers,
                             timeout=timeout)
    if response.status_code != 200 or response.headers.get("content-type") != media_type:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.content


def task_of(model: str) -> Optional[str]:
    """The task named by a model's prefix (``detection_onnx`` -> ``detection``), else None."""
    return next((task for task in TASKS if model.startswith(f"{task}_")), None)


def sample_photo(name: str = "astronaut") -> bytes:
    """A scikit-image sample photo (astronaut, chelsea, coffee...) encoded as JPEG."""
    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def parser(default_model: str, description: Optional[str] = None,
           prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The options every example shares: --model, --image, --url, --key-file."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model, help="model name (default: %(default)s)")
    p.add_argument("--image", type=Path, help="image file to send (default: scikit-image's astronaut photo as JPEG)")
    p.add_argument("--url", default=DEFAULT_URL, help="TorchServe inference address (default: %(default)s)")
    p.add_argument("--key-file", default=DEFAULT_KEY_FILE,
                   help="key_file.json in the directory TorchServe was started from (default: %(default)s)")
    return p


def image_bytes(args: argparse.Namespace) -> bytes:
    return args.image.read_bytes() if args.image else sample_photo()


def ask(args: argparse.Namespace, data: Optional[bytes] = None) -> Any:
    """Send ``data`` (or the image the options name) to the model; the answer, or exit 1 with the error."""
    print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    try:
        status, answer = predict(args.url, args.model, image_bytes(args) if data is None else data,
                                 read_token(args.key_file))
    except requests.ConnectionError:
        raise SystemExit(f"error: no TorchServe answers at {args.url} (is it running? see --url)") from None
    if status != 200:
        print(f"error: HTTP {status}: {json.dumps(answer)}", file=sys.stderr)
        if status == 401 or (isinstance(answer, dict) and answer.get("type") == "InvalidKeyException"):
            print("hint: pass --key-file <directory TorchServe was started from>/key_file.json", file=sys.stderr)
        raise SystemExit(1)
    return answer


def main(argv: Optional[List[str]] = None) -> int:
    p = parser("classification_onnx", __doc__, "python -m examples.client")
    p.add_argument("--draw", type=Path, metavar="OUT.png", help="also save the server's picture of the answer")
    args = p.parse_args(argv)
    data = image_bytes(args)
    answer = ask(args, data)
    print(json.dumps(answer, indent=2))
    if args.draw:
        media_type = "image/jpeg" if args.draw.suffix.lower() in (".jpg", ".jpeg") else "image/png"
        args.draw.write_bytes(picture(args.url, args.model, data, read_token(args.key_file), media_type))
        print(f"saved {args.draw}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

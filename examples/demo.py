"""The README's first command: start TorchServe on the default archives, send a real photo to
each model, print the answers and save each model's picture as the server draws it
(the same photo sent with ``Accept: image/png``).

    python -m examples.demo [--image photo.jpg] [--keep-running]

Run ``./archive.sh`` first (``bash run.sh demo`` does both).
"""

from __future__ import annotations

import argparse
import io
import shlex
import socket
import sys
from pathlib import Path

from PIL import Image

from examples.client import picture
from tsvision.tools.serve.server import REPO_CONFIG, TorchServe, read_properties

REPO = Path(__file__).resolve().parent.parent
MODELS = [f"{task}_{backend}" for task in ("classification", "segmentation", "detection")
          for backend in ("torchscript", "onnx")]
MODELS += ["yolov8n_onnx", "fasterrcnn_onnx", "maskrcnn_onnx", "keypointrcnn_onnx"]  # docs/models.md


def port_in_use(address: str) -> bool:
    port = int(address.rsplit(":", 1)[1])
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def summarize(model: str, answer) -> str:
    if model.startswith("classification"):
        return ", ".join(f"{x['label']} {x['score']:.4f}" for x in answer[:3])
    if model.startswith("segmentation"):
        biggest = sorted(answer["classes"], key=lambda c: -c["pixels"])[:3]
        shares = ", ".join(f"{c['label']} {c['fraction']:.1%}" for c in biggest)
        return f"{answer['width']}x{answer['height']} mask; {shares}"
    top = ", ".join(f"{d['label']} {d['score']:.3f} at {[round(v) for v in d['box']]}" for d in answer[:2])
    if answer and "mask" in answer[0]:
        return f"{len(answer)} instances with RLE masks; {top}"
    if answer and "keypoints" in answer[0]:
        return f"{len(answer)} persons with {len(answer[0]['keypoints'])} keypoints each; {top}"
    return f"{len(answer)} boxes; {top}"


def keep_running_help(server: TorchServe) -> str:
    """What to type to send the README's requests to this server, and to stop it."""
    key_file = shlex.quote(str(server.workdir / "key_file.json"))
    torchserve = shlex.quote(str(Path(sys.executable).parent / "torchserve"))
    return "\n".join([
        f"TorchServe keeps running (pid {server.pid}). Its key is in {server.workdir / 'key_file.json'}:",
        "  KEY=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"inference\"][\"key\"])' "
        f"{key_file})",
        "send a photo (photo.jpg) to detection_onnx:",
        f'  curl -s -H "Authorization: Bearer $KEY" -H "Content-Type: image/jpeg" --data-binary @photo.jpg '
        f"{server.inference_url}/predictions/detection_onnx",
        "stop it with:",
        f"  (cd {shlex.quote(str(server.workdir))} && TMPDIR=$PWD/tmp {torchserve} --stop)",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, help="photo to send (default: scikit-image's astronaut)")
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "demo", help="where the pictures go")
    parser.add_argument("--keep-running", action="store_true", help="leave TorchServe running afterwards")
    args = parser.parse_args(argv)

    missing = [m for m in MODELS if not (args.store / f"{m}.mar").exists()]
    if missing:
        print(f"missing archives {missing}: run ./archive.sh first", file=sys.stderr)
        return 2
    if args.image:
        data = args.image.read_bytes()
    else:
        import skimage.data

        photo = Image.fromarray(skimage.data.astronaut())
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=92)
        data = buffer.getvalue()

    shipped = read_properties(REPO_CONFIG)
    busy = any(port_in_use(shipped[k]) for k in ("inference_address", "management_address", "metrics_address"))
    server = TorchServe(args.store, REPO / "build" / "torchserve", free_ports=busy)
    print("=" * 78)
    print("NOTE: the default archives carry RANDOM weights (nothing can be downloaded here).")
    print("      The answers below show the formats and the pipeline, not knowledge.")
    print("=" * 78)
    print(f"starting TorchServe{' (default ports busy: using free ones)' if busy else ''} ...", flush=True)
    server.start()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        print(f"inference {server.inference_url}  management {server.management_url}  metrics {server.metrics_url}")
        print(f"token: {server.workdir / 'key_file.json'}\n")
        for model in MODELS:
            response = server.predict(model, data)
            if response.status_code != 200:
                print(f"{model:28s} HTTP {response.status_code}: {response.text}")
                continue
            answer = response.json()
            (args.out / f"{model}.png").write_bytes(picture(server.inference_url, model, data, server.key("inference")))
            print(f"{model:28s} {summarize(model, answer)}")
        print(f"\npictures of the answers: {args.out}/")
    finally:
        if args.keep_running:
            print(keep_running_help(server))
        else:
            server.stop()
            print("TorchServe stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

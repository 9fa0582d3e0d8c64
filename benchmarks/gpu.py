"""The GPU paths, in one script: ``python -m benchmarks.gpu`` (run it where a GPU is lent; rehearsed on the CPU).

1. what this host has: torch's CUDA devices, ONNX Runtime's providers (``onnxruntime-gpu`` brings CUDA's);
2. the three default models exported (``tsvision export``, or reused from ``--exports``);
3. answers: every default archive's handler (ONNX Runtime and TorchScript) in-process on the CPU and on
   ``cuda:0`` (``LocalWorker`` with ``gpu=0``, as TorchServe assigns it), on real photos; scores within
   ``--score-tol``, boxes within ``--box-tol`` px, segmentation masks agreeing on ``--mask-agreement``
   of the pixels;
4. served throughput at ``--clients`` clients: one TorchServe with ``number_of_gpu=0``, then one with
   the GPU, the same archives;
5. where the time goes on the GPU: ``benchmarks.budget``'s stages, in-process, on ``cuda:0``.

Without a GPU it says so, runs steps 1-4 on the CPU alone (the CPU path, both sides the CPU's) and
skips step 5's GPU half, so the script is rehearsed before a GPU lease is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from benchmarks.budget import stages
from benchmarks.inprocess import close
from benchmarks.load import drain, run_wrk, wrk_path
from benchmarks.lock import heavy_run
from benchmarks.models import MODEL_FILES, build_ours, prepare_exports
from benchmarks.photo import make_photo
from benchmarks.warmup import warm_batch_sizes
from tsvision.serving import VisionHandler
from tsvision.serving.masks import decode_class_png
from tsvision.tools.archive.local_worker import LocalWorker
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("classification", "segmentation", "detection")
BACKENDS = ("onnx", "torchscript")


def host() -> dict:
    """The GPUs torch sees and ONNX Runtime's providers."""
    import onnxruntime
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(count)]
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
            "onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def worker(folder: Path, backend: str, gpu: Optional[int]) -> LocalWorker:
    settings = json.loads((folder / "settings.json").read_text())
    return LocalWorker(VisionHandler, folder, MODEL_FILES[backend], {"batchSize": 8, "handler": settings}, gpu=gpu)


def answer(handler: LocalWorker, photo: bytes) -> Any:
    response = handler.predict([{"body": photo}], [{"body": {"content-type": "image/jpeg"}}])[0]
    if response.status != 200:
        raise RuntimeError(f"answer {response.status}: {str(response.body)[:200]}")
    return json.loads(response.body)


def differences(cpu: Any, gpu: Any, key: str = "") -> Dict[str, float]:
    """The largest differences between two answers: ``score``/``box`` (absolute), ``mask`` (share of
    pixels that differ), ``structure`` (1 when lists differ in length or strings differ)."""
    found: Dict[str, float] = {}

    def worst(name: str, value: float) -> None:
        found[name] = max(found.get(name, 0.0), value)

    if isinstance(cpu, dict) and isinstance(gpu, dict):
        if set(cpu) != set(gpu):
            worst("structure", 1.0)
        for name in set(cpu) & set(gpu):
            for k, v in differences(cpu[name], gpu[name], name).items():
                worst(k, v)
    elif isinstance(cpu, list) and isinstance(gpu, list):
        if len(cpu) != len(gpu):
            worst("structure", 1.0)
        for a, b in zip(cpu, gpu):
            for k, v in differences(a, b, key).items():
                worst(k, v)
    elif key == "mask" and isinstance(cpu, str) and isinstance(gpu, str):
        worst("mask", float(np.mean(decode_class_png(cpu) != decode_class_png(gpu))) if cpu != gpu else 0.0)
    elif isinstance(cpu, (int, float)) and isinstance(gpu, (int, float)):
        worst("box" if key == "box" else "score", abs(float(cpu) - float(gpu)))
    elif cpu != gpu:
        worst("structure", 1.0)
    return found


def compare_answers(folders: Dict[str, Path], photos: Dict[str, bytes], gpu: Optional[int],
                    args: argparse.Namespace) -> List[dict]:
    rows = []
    for task, folder in folders.items():
        for backend in BACKENDS:
            cpu_worker, gpu_worker = worker(folder, backend, None), worker(folder, backend, gpu)
            try:
                device = getattr(gpu_worker.handler, "device", "?")
                worst: Dict[str, float] = {}
                for photo in photos.values():
                    for k, v in differences(answer(cpu_worker, photo), answer(gpu_worker, photo)).items():
                        worst[k] = max(worst.get(k, 0.0), v)
                ok = (worst.get("structure", 0) == 0 and worst.get("score", 0) <= args.score_tol
                      and worst.get("box", 0) <= args.box_tol and 1 - worst.get("mask", 0) >= args.mask_agreement)
                rows.append({"task": task, "backend": backend, "device": device, "worst": worst, "within": ok})
                print(f"  answers    {task:<14} {backend:<12} on {device:<7} {json.dumps(worst)} "
                      f"{'within tolerance' if ok else 'OUTSIDE tolerance'}", flush=True)
            finally:
                close(cpu_worker)
                close(gpu_worker)
    return rows


def serve(folders: Dict[str, Path], photo_path: Path, out: Path, gpus: int,
          args: argparse.Namespace) -> Dict[str, dict]:
    """Req/s at ``args.clients`` per archive, TorchServe given ``gpus`` GPUs."""
    store = out / f"store-gpu{gpus}"
    names = {}
    for task, folder in folders.items():
        for backend in BACKENDS:
            name = f"gpu_{task}_{backend}"
            build_ours(folder, backend, name, store, 8, 20, 1)
            names[name] = f"{task} {backend}"
    server = TorchServe(store, out / f"torchserve-gpu{gpus}", models=[f"{n}.mar" for n in names],
                        overrides={"number_of_gpu": str(gpus)})
    found = {}
    try:
        server.start(timeout=900)
        headers = server.headers("inference")
        for name, label in names.items():
            url = f"{server.inference_url}/predictions/{name}"
            warm_batch_sizes(url, photo_path.read_bytes(), headers, 8, budget_s=30)
            run_wrk(url, photo_path, headers, args.clients, 2)
            drain(url, photo_path, headers)
            measured = run_wrk(url, photo_path, headers, args.clients, args.seconds)
            drain(url, photo_path, headers)
            found[label] = {"req_s": measured["throughput"], "failed": measured["failed"],
                            "p50_ms": (measured["latency_ms"] or {}).get("p50")}
            print(f"  served     {label:<28} {gpus} GPU  c={args.clients} {measured['throughput']:7.1f} req/s",
                  flush=True)
    finally:
        server.stop()
    return found


def photos() -> Dict[str, bytes]:
    """The benchmark photo and scikit-image's coffee and chelsea (other sizes), as JPEG."""
    import io

    import skimage.data
    from PIL import Image

    found = {"astronaut 1280×720": make_photo()}
    for name in ("coffee", "chelsea"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, format="JPEG", quality=90)
        found[name] = buffer.getvalue()
    return found


def markdown(data: dict) -> str:
    where = ", ".join(data["host"]["gpus"]) or "no GPU (a CPU rehearsal: both sides ran on the CPU)"
    lines = [f"`python -m benchmarks.gpu`, {data['started']}, on {where}; torch {data['host']['torch']} "
             f"(CUDA {data['host']['cuda']}), ONNX Runtime {data['host']['onnxruntime']} "
             f"({', '.join(data['host']['providers'])}).", "",
             "| task | backend | device | largest score diff | largest box diff (px) | mask pixels differing "
             "| within tolerance | CPU req/s | GPU req/s | GPU ÷ CPU |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for row in data["answers"]:
        label = f"{row['task']} {row['backend']}"
        cpu = data["served"].get("cpu", {}).get(label, {}).get("req_s")
        gpu = data["served"].get("gpu", {}).get(label, {}).get("req_s")
        ratio = f"{gpu / cpu:.2f}×" if cpu and gpu else "–"
        worst = row["worst"]
        lines.append(f"| {row['task']} | {row['backend']} | {row['device']} | {worst.get('score', 0):.2g} | "
                     f"{worst.get('box', 0):.2g} | {worst.get('mask', 0):.2g} | {'yes' if row['within'] else '**no**'} "
                     f"| {cpu if cpu is not None else '–'} | {gpu if gpu is not None else '–'} | {ratio} |")
    if data.get("stages"):
        lines += ["", "Where the time goes on the GPU (ms per image, batch 8, one thread; "
                  "`benchmarks.budget`'s stages):",
                  "", "| task | " + " | ".join(data["stages"][next(iter(data["stages"]))]) + " |",
                  "|---|" + "---:|" * len(data["stages"][next(iter(data["stages"]))])]
        for task, found in data["stages"].items():
            lines.append(f"| {task} | " + " | ".join(f"{v:.2f}" for v in found.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--out", type=Path, help="default results/gpu-<time>")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--score-tol", type=float, default=2e-3)
    parser.add_argument("--box-tol", type=float, default=1.0)
    parser.add_argument("--mask-agreement", type=float, default=0.999)
    parser.add_argument("--no-served", action="store_true", help="answers and stages only")
    args = parser.parse_args(argv)
    out = (args.out or ROOT / "results" / time.strftime("gpu-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTORCH_TENSOREXPR"] = "0"
    data: Dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": host()}
    gpu = 0 if data["host"]["gpus"] else None
    print(f"gpu: {data['host']['gpus'] or 'NO GPU here: a CPU rehearsal (both sides on the CPU)'}; "
          f"ONNX Runtime providers {data['host']['providers']}", flush=True)
    if gpu is not None and "CUDAExecutionProvider" not in data["host"]["providers"]:
        print("gpu: ONNX Runtime has no CUDA provider (install onnxruntime-gpu): its archives run on the CPU",
              flush=True)
    with heavy_run(timeout_s=1800):
        folders = {task: prepare_exports(task, args.exports) for task in TASKS}
        data["answers"] = compare_answers(folders, photos(), gpu, args)
        data["served"] = {}
        if not args.no_served:
            wrk_path()
            photo_path = out / "photo.jpg"
            photo_path.write_bytes(make_photo())
            data["served"]["cpu"] = serve(folders, photo_path, out, 0, args)
            if gpu is not None:
                data["served"]["gpu"] = serve(folders, photo_path, out, 1, args)
        data["stages"] = {}
        if gpu is not None:
            for task, folder in folders.items():
                handler = worker(folder, "onnx", gpu)
                try:
                    data["stages"][task] = stages(handler.handler.task, make_photo(), 8, 10)
                finally:
                    close(handler)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(data))
    print(markdown(data))
    ok = all(row["within"] for row in data["answers"])
    print(f"gpu: {'answers within tolerance' if ok else 'answers OUTSIDE tolerance'} -> {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

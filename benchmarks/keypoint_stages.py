"""Where Keypoint R-CNN's time goes, in-process, batch 1: ``python -m benchmarks.keypoint_stages``.

Per stage, ms per image (medians over alternating rounds), on the families benchmark's photo
(scikit-image astronaut, 640×640 JPEG) and its export (``benchmarks.families.prepare``):

- ours: decode+prepare (``read_batch``), forward (``task.infer``), finish+JSON, for each model file
  given (ONNX before/after the cubic-Resize rewrite, TorchScript);
- eager torchvision: decode+to_tensor, forward (``model([x])`` under ``no_grad``), answer.

Also the size each runs at and the ONNX forward under other session options. Takes the heavy-run lock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.keypoint_stages")
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "families" / "keypointrcnn")
    parser.add_argument("--files", default="model.onnx,model.pt", help="model files in --folder (or paths)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=6, help="per side per round")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: their defaults, the cores)")
    parser.add_argument("--session-options", action="store_true", help="also the ONNX forward under other session options")
    args = parser.parse_args()

    import torch
    from torchvision.transforms.functional import to_tensor

    from benchmarks.families import TorchvisionReference, decode, square_photo
    from benchmarks.lock import heavy_run
    from tsvision.serving.service import read_batch
    from tsvision.serving.tasks import load_export

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"threads": args.threads} if args.threads else {}
    body = square_photo("astronaut")
    rows, types = [{"body": body}], [{"body": "image/jpeg"}]
    with heavy_run(timeout_s=1800):
        reference = TorchvisionReference(args.folder)
        files = [f for f in args.files.split(",") if f]
        tasks = {}
        for name in files:
            path = Path(name) if "/" in name else args.folder / name
            tasks[name] = load_export(args.folder, str(path), **overrides)  # another folder's file: this folder's settings
        with torch.no_grad():
            images, _ = reference.model.transform([to_tensor(decode(body))])
        print(f"load average {os.getloadavg()[0]:.2f}; eager transform runs at {tuple(images.tensors.shape)}; torch threads {torch.get_num_threads()}", flush=True)

        def ours(task):
            a = time.perf_counter()
            batch = read_batch(task, rows, types)
            b = time.perf_counter()
            task.infer(batch.images)
            c = time.perf_counter()
            json.dumps(batch.finish(task).responses(task, "", "")[0].body)
            return {"decode+prepare": b - a, "forward": c - b, "finish+json": time.perf_counter() - c}

        def eager():
            a = time.perf_counter()
            x = [to_tensor(decode(body))]
            b = time.perf_counter()
            with torch.no_grad():
                found = reference.model(x)[0]
            c = time.perf_counter()
            reference.answer(found, (640, 640))
            return {"decode+prepare": b - a, "forward": c - b, "finish+json": time.perf_counter() - c}

        sides = {**{name: (lambda t=task: ours(t)) for name, task in tasks.items()}, "eager": eager}
        for side in sides.values():
            for _ in range(2):
                side()
        stats = {name: [] for name in sides}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for name in order:
                for _ in range(args.calls):
                    stats[name].append(sides[name]())
        table = {}
        for name, calls in stats.items():
            table[name] = {k: round(statistics.median(c[k] for c in calls) * 1000, 1) for k in calls[0]}
            table[name]["total"] = round(statistics.median(sum(c.values()) for c in calls) * 1000, 1)
            table[name]["img_s"] = round(1000 / table[name]["total"], 2)
        print(json.dumps(table, indent=1))
        print(f"load average after {os.getloadavg()[0]:.2f}", flush=True)
        if args.session_options:
            session_options(args.folder, [f for f in files if f.endswith(".onnx")], body, args.rounds, args.calls)


def session_options(folder: Path, files, body: bytes, rounds: int, calls: int) -> None:
    """The ONNX forward alone under other ORT session options (threads, graph optimisation level)."""
    import numpy as np
    import onnxruntime as ort

    from benchmarks.families import decode

    image = np.ascontiguousarray(np.asarray(decode(body)).transpose(2, 0, 1), dtype=np.float32) / 255
    variants = {}
    for name in files:
        path = Path(name) if "/" in name else folder / name
        for label, level, threads in (("all,2t", "ORT_ENABLE_ALL", 0), ("all,1t", "ORT_ENABLE_ALL", 1),
                                      ("basic,2t", "ORT_ENABLE_BASIC", 0), ("extended,2t", "ORT_ENABLE_EXTENDED", 0)):
            options = ort.SessionOptions()
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            session.run(None, {"images": image})
            variants[f"{name} {label}"] = (session, [])
    for round_ in range(rounds):
        for key in (list(variants) if round_ % 2 == 0 else list(variants)[::-1]):
            session, times = variants[key]
            for _ in range(calls):
                tick = time.perf_counter()
                session.run(None, {"images": image})
                times.append(time.perf_counter() - tick)
    print(json.dumps({k: round(statistics.median(v[1]) * 1000, 1) for k, v in variants.items()}, indent=1))


if __name__ == "__main__":
    main()

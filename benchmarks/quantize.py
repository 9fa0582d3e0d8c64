"""int8 against fp32 in-process, side by side in one run (issue 18: quantised ONNX).

    python -m benchmarks.quantize [--tasks classification,segmentation,detection] [--rounds 20]
                                  [--batch-sizes 1,8] [--served]

Per task: the default model exported once (random seeded weights, ``build/quantize/<task>``) and
quantised by ``tsvision export --quantize int8`` (calibrated on scikit-image's photos); then both ONNX
files, loaded in the serving task, answer the same photo (``benchmarks.photo``: the astronaut,
1280×720 JPEG) in interleaved rounds, the order alternating each round, so a busy machine slows
both alike. Two figures per batch size, median milliseconds per batch:

- ``pipeline``: bytes -> decode -> prepare -> infer -> finish -> JSON, through the handler's
  ``handle`` with TorchServe's own ``Context`` (``LocalWorker``), as a worker calls it;
- ``model``: the forward pass alone (``load_export`` -> ``prepare_batch``, then ``runtime.run``).

Ratios are fp32 time / int8 time (above 1: int8 faster). The agreement figures come from the
export's ``report.json`` (int8 vs fp32 on the calibration photos). The CPU's int8-relevant flags
(AVX2, AVX-512, VNNI, AMX) are recorded: ONNX Runtime's uint8×int8 kernels gain most with VNNI.
Holds the machine lock (``benchmarks.lock``).
With ``--served``, both archives of each task also run in one TorchServe under wrk
(``benchmarks.load.run_wrk``, ``--connections`` clients, the order alternating round by round).
Writes ``results/quantize-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.inprocess import answer_all, close, load_task
from benchmarks.lock import heavy_run
from benchmarks.models import export
from benchmarks.photo import make_photo
from tsvision.serving.tasks import load_export

ROOT = Path(__file__).resolve().parent.parent
INT8_FILE = "model.int8.onnx"  # what tsvision export --quantize int8 writes beside model.onnx
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_summary() -> dict:
    """The model name and which int8-relevant instruction sets the CPU has (from /proc/cpuinfo)."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    import os

    return {"model": model, "cores": os.cpu_count(), **{flag: flag in flags for flag in INT8_FLAGS},
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni"})}


def prepare(task: str, root: Path, fresh: bool) -> Path:
    """The fp32 export and its int8 file (``tsvision export --quantize int8``), reused unless ``fresh``."""
    folder = root / task
    if fresh or not all((folder / name).exists() for name in ("model.onnx", "settings.json", "labels.json", INT8_FILE,
                                                              "report.json")):
        export(task, folder, "--quantize", "int8")
    return folder


def measure(task: str, folder: Path, photo: bytes, batch_sizes: List[int], rounds: int) -> dict:
    """Median ms per batch of each variant, interleaved."""
    files = {"fp32": ("model.onnx", {}), "int8": (INT8_FILE, {"quantized": "int8"})}
    # the forward pass alone: serial preparation (micro_batch 0), so the prepared batch holds every image
    tasks = {name: load_export(folder, file, micro_batch=0) for name, (file, _) in files.items()}
    workers = {name: load_task(folder, file, overrides) for name, (file, overrides) in files.items()}
    result: Dict[str, object] = {}
    try:
        for size in batch_sizes:
            inputs = tasks["fp32"].prepare_batch([photo] * size).inputs
            calls = {}
            for name in files:
                calls[f"pipeline_{name}"] = partial(answer_all, workers[name], photo, size)
                calls[f"model_{name}"] = partial(tasks[name].runtime.run, inputs)
            for call in calls.values():  # warm-up: each batch size, each variant
                for _ in range(2):
                    call()
            times: Dict[str, List[float]] = {name: [] for name in calls}
            order = list(calls)
            for round_ in range(rounds):
                for name in (order if round_ % 2 == 0 else order[::-1]):
                    tick = time.perf_counter()
                    calls[name]()
                    times[name].append((time.perf_counter() - tick) * 1000)
            medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
            result[f"batch_{size}"] = {
                "ms_per_batch": medians,
                "pipeline_speedup": round(medians["pipeline_fp32"] / medians["pipeline_int8"], 3),
                "model_speedup": round(medians["model_fp32"] / medians["model_int8"], 3),
                "images_per_s": {name: round(size * 1000 / ms, 1) for name, ms in medians.items()},
                "rounds": rounds,
            }
    finally:
        for t in tasks.values():
            t.close()
        for worker in workers.values():
            close(worker)
    report = json.loads((folder / "report.json").read_text())["quantized"]
    result["agreement_on_calibration_photos"] = report["agreement"]
    result["sizes_bytes"] = {"fp32": report["fp32_size_bytes"], "int8": report["size_bytes"]}
    return result


def probe_models(folder: Path) -> Dict[str, Path]:
    """Two synthetic networks that show what int8 gains on this CPU apart from any real model: five
    dense 3×3 convolutions (64 channels, ResNet-like) and four depthwise-separable blocks (a 3×3
    depthwise and a 1×1 convolution, MobileNet-like), 112×112 inputs, quantised the same way."""
    import torch
    from torch import nn

    from tsvision.tools.export.quantize import quantize_onnx

    def relu_conv(*args, **kwargs):
        return [nn.Conv2d(*args, **kwargs), nn.ReLU()]

    torch.manual_seed(0)
    stacks = {"dense_conv3x3": relu_conv(3, 64, 3, padding=1)
              + sum([relu_conv(64, 64, 3, padding=1) for _ in range(4)], []),
              "depthwise_separable": relu_conv(3, 64, 3, padding=1) + sum(
                  [relu_conv(64, 64, 3, padding=1, groups=64) + relu_conv(64, 64, 1) for _ in range(4)], [])}
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, layers in stacks.items():
        fp32, int8 = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
        if not int8.exists():
            sample = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(1))
            torch.onnx.export(nn.Sequential(*layers).eval(), (sample[:2],), str(fp32), input_names=["images"],
                              output_names=["out"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                              verbose=False, external_data=False)
            quantize_onnx(fp32, int8, sample.numpy())
        files[name] = fp32
    return files


def measure_probe(path: Path, batch_size: int, rounds: int) -> dict:
    """fp32 vs int8 forward pass of one probe network, interleaved, median ms."""
    import numpy as np
    import onnxruntime as ort

    def session(file: Path) -> "ort.InferenceSession":
        options = ort.SessionOptions()  # as tsvision's ONNX runtime: threads that do not spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    batch = np.random.default_rng(0).random((batch_size, 3, 112, 112), dtype=np.float32)
    runtimes = {"fp32": session(path), "int8": session(path.with_suffix(".int8.onnx"))}
    feeds = {name: {runtime.get_inputs()[0].name: batch} for name, runtime in runtimes.items()}
    for name, runtime in runtimes.items():
        runtime.run(None, feeds[name])
        runtime.run(None, feeds[name])
    times: Dict[str, List[float]] = {name: [] for name in runtimes}
    for round_ in range(rounds):
        for name in (["fp32", "int8"] if round_ % 2 == 0 else ["int8", "fp32"]):
            tick = time.perf_counter()
            runtimes[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - tick) * 1000)
    medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
    return {"batch_size": batch_size, "ms": medians, "speedup": round(medians["fp32"] / medians["int8"], 3),
            "rounds": rounds}


def measure_served(folders: Dict[str, Path], photo: bytes, out: Path, connections: int, rounds: int, seconds: float,
                   warmup: float = 2.0, batch_size: int = 8, delay: int = 20) -> dict:
    """Served JSON throughput of the fp32 and int8 archives of each task in ONE TorchServe, wrk with
    ``connections`` clients, the order alternating round by round; median req/s and their ratio."""
    from benchmarks.load import side_by_side, wrk_path
    from benchmarks.models import build_ours
    from tsvision.tools.serve.server import TorchServe

    wrk_path()
    out.mkdir(parents=True, exist_ok=True)
    photo_path = out / "photo.jpg"
    photo_path.write_bytes(photo)
    store = out / "store"
    for task, folder in folders.items():
        build_ours(folder, "onnx", f"{task}_fp32", store, batch_size, delay, 1, {"quantized": ""})
        build_ours(folder, INT8_FILE, f"{task}_int8", store, batch_size, delay, 1, {"quantized": "int8"})
    server = TorchServe(store, out / "torchserve")
    results = {}
    try:
        server.start(timeout=600)
        for task in folders:
            rates = side_by_side(server, {v: f"{task}_{v}" for v in ("fp32", "int8")}, photo, photo_path, batch_size,
                                 connections, seconds, warmup, rounds, task)
            fp32, int8 = statistics.median(rates["fp32"]), statistics.median(rates["int8"])
            results[task] = {"connections": connections, "fp32_req_s": rates["fp32"], "int8_req_s": rates["int8"],
                             "fp32_median": fp32, "int8_median": int8, "int8_vs_fp32": round(int8 / fp32, 3)}
            print(f"served {task} c={connections}: fp32 {fp32:.1f} req/s, int8 {int8:.1f} req/s -> x{int8 / fp32:.3f} "
                  f"(rounds {rates['fp32']} / {rates['int8']})", flush=True)
    finally:
        server.stop()
    return results



def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="classification,segmentation,detection")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--exports", type=Path, default=ROOT / "build" / "quantize")
    p.add_argument("--fresh", action="store_true", help="export and quantise again")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--lock-timeout", type=float, default=1800)
    p.add_argument("--served", action="store_true",
                   help="also serve the fp32 and int8 archives in one TorchServe under wrk")
    p.add_argument("--connections", type=int, default=8, help="wrk clients for --served")
    p.add_argument("--served-rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6, help="seconds per wrk point for --served")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the two synthetic networks (dense 3×3 and depthwise-separable convolutions)")
    args = p.parse_args(argv)
    tasks, sizes = args.tasks.split(","), [int(s) for s in args.batch_sizes.split(",")]
    photo = make_photo()
    cpu = cpu_summary()
    flags = ", ".join(f"{f} {'yes' if cpu[f] else 'no'}" for f in INT8_FLAGS)
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; {flags}", flush=True)
    folders = {task: prepare(task, args.exports, args.fresh) for task in tasks}  # exports outside the lock
    probes = {} if args.no_probe else probe_models(args.exports / "probe")
    started = time.time()
    results, probe_results = {}, {}
    with heavy_run(timeout_s=args.lock_timeout):
        for name, path in probes.items():
            probe_results[name] = measure_probe(path, max(sizes), args.rounds)
            r = probe_results[name]
            print(f"probe {name} batch {r['batch_size']}: fp32 {r['ms']['fp32']} ms, int8 {r['ms']['int8']} ms "
                  f"-> x{r['speedup']}", flush=True)
        for task in tasks:
            results[task] = measure(task, folders[task], photo, sizes, args.rounds)
            for size in sizes:
                r = results[task][f"batch_{size}"]
                ms = r["ms_per_batch"]
                print(f"{task} batch {size}: model fp32 {ms['model_fp32']} ms, int8 {ms['model_int8']} ms "
                      f"-> x{r['model_speedup']}; pipeline fp32 {ms['pipeline_fp32']} ms, "
                      f"int8 {ms['pipeline_int8']} ms -> x{r['pipeline_speedup']}", flush=True)
            agreement = json.dumps(results[task]["agreement_on_calibration_photos"])
            print(f"{task} agreement on the calibration photos: {agreement}", flush=True)
        served = (measure_served(folders, photo, args.out / time.strftime("quantize-served-%Y%m%d-%H%M%S"),
                                 args.connections, args.served_rounds, args.seconds) if args.served else {})
    summary = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "seconds": round(time.time() - started, 1),
               "cpu": cpu, "photo": "scikit-image astronaut 1280x720 JPEG", "weights": "RANDOM (seeded)",
               "speedup": "fp32 ms / int8 ms (median per batch); above 1: int8 faster", "results": results,
               "probes": probe_results, "served": served}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"quantize-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast can an ONNX model alone run on this host: the ceiling a served pipeline cannot pass.

``python -m benchmarks.studies.model_ceiling [--model build/families/yolov8n/model.onnx] [--size 640]``:
random N×3×size×size inputs, ONNX Runtime on the CPU, no decoding, no serving:

- ``alone``: one session, one process, ``--threads`` intra-op threads each (1 and 2 by default), per
  image at each of ``--batches`` (medians of ``--rounds`` timed calls);
- ``together``: ``--processes`` one-thread sessions in their own processes at once (what the same
  number of one-thread TorchServe workers can do at most), images per second summed, per batch size
  (the median of ``--turns`` turns of ``--seconds`` ÷ ``--turns`` each; ``each``: every process's rate per turn);
- with ``--split-head`` (a YOLOv8 export): the same again for the graph cut at the head's raw outputs, as
  the worker runs it with ``split_head`` on (docs/formats.md), and each figure's speed-up over the whole graph.

Issue 28's goal 1 (docs/performance.md, "Workers and batch size") used it for YOLOv8n.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from tsvision.serving.formats.yolo_head import split_graph

ROOT = Path(__file__).resolve().parents[2]


Graph = Union[Path, bytes]  # a model file, or a serialised graph


def session(graph: Graph, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    model = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def cut_at_the_head(path: Path) -> bytes:
    """``path``'s graph cut at YOLOv8's head (``split_graph``), serialised; an error when it has no such head."""
    model = onnx.load(str(path))
    if split_graph(model) is None:
        raise SystemExit(f"{path}: not a YOLOv8 detection graph (--split-head needs one)")
    return model.SerializeToString()


def batch_of(count: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).random((count, 3, size, size), dtype=np.float32)


def ms_per_image(graphs: Sequence[Graph], threads: int, batch: int, size: int, rounds: int) -> List[float]:
    """Median milliseconds per image of each graph's session alone, the graphs' calls taking turns (so that
    a noisy minute of this host weighs on each the same)."""
    models = [session(graph, threads) for graph in graphs]
    feeds = [{model.get_inputs()[0].name: batch_of(batch, size)} for model in models]
    for model, feed in zip(models, feeds):
        model.run(None, feed)  # the first call allocates
    times: List[List[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, feed, taken in zip(models, feeds, times):
            start = time.perf_counter()
            model.run(None, feed)
            taken.append((time.perf_counter() - start) * 1000 / batch)
    return [statistics.median(taken) for taken in times]


def _loop(graph: Graph, batch: int, size: int, seconds: float, rates) -> None:
    model = session(graph, 1)
    feed = {model.get_inputs()[0].name: batch_of(batch, size)}
    model.run(None, feed)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run(None, feed)
        done += batch
    rates.put(done / (time.perf_counter() - start))


def together(graph: Graph, processes: int, batch: int, size: int, seconds: float) -> List[float]:
    """Images per second of each of ``processes`` one-thread sessions running at once."""
    rates = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_loop, args=(graph, batch, size, seconds, rates))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [rates.get() for _ in workers]


def measure(graphs: Sequence[Graph], args: argparse.Namespace) -> List[Dict[str, Dict[str, dict]]]:
    """The ``alone`` and ``together`` figures of each graph."""
    batches = [int(b) for b in args.batches.split(",")]
    found: List[Dict[str, Dict[str, dict]]] = [{"alone": {}, "together": {}} for _ in graphs]
    for threads in (int(t) for t in args.threads.split(",")):
        for batch in batches:
            for ms, figures in zip(ms_per_image(graphs, threads, batch, args.size, args.rounds), found):
                figures["alone"][f"{threads} thread(s), batch {batch}"] = {"ms_per_image": round(ms, 3),
                                                                            "images_per_s": round(1000 / ms, 1)}
    for batch in batches:
        key = f"{args.processes} one-thread processes, batch {batch}"
        for _ in range(args.turns):  # the graphs take turns here too, each turn adding its seconds
            for graph, figures in zip(graphs, found):
                rates = together(graph, args.processes, batch, args.size, args.seconds / args.turns)
                row = figures["together"].setdefault(key, {"turns": [], "each": []})
                row["turns"].append(round(sum(rates), 1))
                row["each"].append([round(rate, 1) for rate in rates])
    for figures in found:
        for row in figures["together"].values():
            row["images_per_s"] = round(statistics.median(row["turns"]), 1)
    return found


def speed_ups(whole: Dict[str, Dict[str, dict]], cut: Dict[str, Dict[str, dict]]) -> Dict[str, float]:
    """Images per second of the cut graph ÷ the whole graph's, figure by figure."""
    return {f"{kind}: {key}": round(cut[kind][key]["images_per_s"] / whole[kind][key]["images_per_s"], 3)
            for kind in ("alone", "together") for key in whole[kind]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.model_ceiling", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "build" / "families" / "yolov8n" / "model.onnx")
    p.add_argument("--size", type=int, default=640, help="side of the square input")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--threads", default="1,2", help="intra-op threads of the session alone")
    p.add_argument("--processes", type=int, default=2, help="one-thread sessions at once")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=12, help="per batch size and graph, the sessions at once")
    p.add_argument("--turns", type=int, default=3, help="the graphs' turns at the sessions at once (median)")
    p.add_argument("--split-head", action="store_true",
                   help="also the graph cut at YOLOv8's head (as split_head runs it), and its speed-up")
    args = p.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: no such model (python -m benchmarks.families --families yolov8n exports it)")
    graphs: List[Graph] = [args.model, *([cut_at_the_head(args.model)] if args.split_head else [])]
    whole, *cut = measure(graphs, args)
    found = {"model": str(args.model), **whole}
    if cut:
        found["split_head"] = {**cut[0], "speed_up": speed_ups(whole, cut[0])}
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

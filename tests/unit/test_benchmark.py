"""The performance harness, without a TorchServe of its own: the goals, tables and plot from a
recorded result; wrk's summary from a local HTTP server; our handler, the stock handler and the
empty handler in-process (``LocalWorker``, TorchServe's own ``Context``) on a tiny model; the lock;
the scaling, families and suite arithmetic; and that benchmarks/ imports only public APIs.
Asserts what was measured, never how fast. The served run itself is ``benchmarks.run --quick``."""

from __future__ import annotations

import ast
import json
import shutil
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List

import pytest

import benchmarks
from benchmarks import report
from benchmarks.lock import heavy_run

BENCHMARKS = Path(benchmarks.__file__).resolve().parent  # wherever this file lives under tests/

# -- benchmarks/ through public APIs only -----------------------------------------------------------
# tsvision modules the benchmarks may import, with the names they may take from each (None: any public
# name). Each is documented: README/docs name the handler classes, load_export, the masks helpers,
# TorchServe, LocalWorker, build_exportable (docs/models.md), quantize_onnx (docs/quantization.md) and
# parse_overrides (the --set syntax, README's configuration section).
PUBLIC_TSVISION = {
    "tsvision.serving": None,
    "tsvision.serving.settings": {"parse_overrides"},
    "tsvision.serving.tasks": {"load_export"},
    "tsvision.serving.masks": None,
    "tsvision.serving.formats.yolo_head": {"split_graph"},  # docs/formats.md, "`yolov8`'s split head"
    "tsvision.tools.serve.server": {"TorchServe", "free_port"},
    "tsvision.tools.serve.kserve_server": {"KServeServer"},
    "tsvision.tools.archive.local_worker": {"LocalWorker"},
    "tsvision.tools.export.architectures": {"build_exportable"},
    "tsvision.tools.export.exportable": {"Exportable"},
    "tsvision.tools.export.quantize": {"quantize_onnx"},
    "tsvision.tools.export.model_files": {"DEFAULT_BATCH_SIZE", "DEFAULT_MAX_BATCH_DELAY", "DEFAULT_WORKERS"},
}
THIRD_PARTY = {"numpy", "torch", "torchvision", "onnx", "onnxruntime", "PIL", "requests", "psutil", "yaml", "skimage",
               "matplotlib", "ultralytics", "ts"}


def import_violations(source: str, filename: str = "<source>") -> List[str]:
    """Every import of ``source`` that is not public: a private name or module (leading underscore), a
    tsvision module or name outside ``PUBLIC_TSVISION``, or a module that is neither the standard
    library, ``THIRD_PARTY`` nor ``benchmarks``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            imported = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            imported = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in imported:
            where = f"{filename}:{node.lineno}: {module}" + (f".{name}" if name else "")
            top = module.split(".")[0]
            if any(part.startswith("_") for part in module.split(".")) or (name or "").startswith("_"):
                found.append(f"{where}: private")
            elif top == "tsvision":
                allowed = PUBLIC_TSVISION.get(module, False)
                if allowed is False or (name is not None and allowed is not None and name not in allowed):
                    found.append(f"{where}: not a public tsvision API")
            elif top != "benchmarks" and top not in THIRD_PARTY and top not in sys.stdlib_module_names:
                found.append(f"{where}: not an allowed module")
    return found


def test_the_import_check_finds_private_and_internal_imports():
    source = ("from __future__ import annotations\nimport json\nimport torch.nn\nfrom benchmarks.load import run_wrk\n"
              "from tsvision.tools.serve.server import TorchServe\nfrom tsvision.serving.tasks import load_export\n"
              "from tsvision.serving.payloads import ParsedRequest\nfrom benchmarks.models import _archive\n"
              "import pandas\nfrom tsvision.tools.export.quantize import AGREEMENT\nimport tsvision.serving.service\n"
              "from torch import _dynamo\n")
    assert [line.split(": ", 1)[1] for line in import_violations(source)] == [
        "tsvision.serving.payloads.ParsedRequest: not a public tsvision API",
        "benchmarks.models._archive: private",
        "pandas: not an allowed module",
        "tsvision.tools.export.quantize.AGREEMENT: not a public tsvision API",
        "tsvision.serving.service: not a public tsvision API",
        "torch._dynamo: private",
    ]


def test_benchmarks_import_only_public_apis():
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert BENCHMARKS / "run.py" in files and BENCHMARKS / "studies" / "before_after.py" in files
    assert [v for path in files for v in import_violations(path.read_text(), str(path.relative_to(BENCHMARKS)))] == []


# -- benchmarks.report: goals, tables and plot from a recorded result -------------------------------
def _served(connections: int, rate: float, p50: float, p95: float, p99: float, size: int) -> dict:
    return {"connections": connections, "throughput": rate, "failed": 0, "bytes_per_response": size,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99}}


@pytest.fixture
def recorded() -> dict:
    """A core-step result as ``benchmarks.run`` writes it (classification: ours, the stock peer, the floor)."""
    return {
        "command": "python -m benchmarks.run --quick", "started": "2026-12-03 10:00", "elapsed_s": 95.0,
        "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 24.0, "torch": "2.14.1", "onnxruntime": "1.32.0",
                    "torchserve": "0.12.0"},
        "config": {"tasks": ["classification"], "variants": ["tsvision-onnx", "stock-torchscript", "empty-handler"],
                   "concurrency": [1, 4], "seconds": 2.0, "warmup": 1.0, "batch_sizes": [1, 8], "batch_size": 8,
                   "max_batch_delay": 20, "workers": 1, "pictures": ["png", "jpeg"], "picture_clients": 4,
                   "photo": "scikit-image astronaut, 1280x720 JPEG"},
        "results": [
            {"task": "classification", "variant": "tsvision-onnx", "backend": "onnx",
             "inprocess": [{"batch_size": 1, "images_per_s": 50.0, "latency_ms_p50": 20.0},
                           {"batch_size": 8, "images_per_s": 75.0, "latency_ms_p50": 100.0}],
             "served": [_served(1, 20.0, 48.0, 55.0, 60.0, 600), _served(4, 60.0, 65.0, 70.0, 80.0, 600)],
             "pictures": {"png": {"throughput": 6.0, "bytes_per_response": 1_200_000, "failed": 0},
                          "jpeg": {"throughput": 15.0, "bytes_per_response": 200_000, "failed": 0}},
             "probe": {"status": 200, "body_bytes": 349}, "rss_mb": 600.4},
            {"task": "classification", "variant": "stock-torchscript", "backend": "torchscript",
             "served": [_served(1, 15.0, 60.0, 70.0, 75.0, 194), _served(4, 30.0, 130.0, 140.0, 150.0, 194)],
             "probe": {"status": 200, "body_bytes": 194}, "rss_mb": 890.0},
            {"task": "torchserve", "variant": "empty-handler", "backend": "none",
             "served": [_served(1, 40.0, 23.0, 25.0, 26.0, 2), _served(4, 1000.0, 4.0, 6.0, 8.0, 2)],
             "probe": {"status": 200, "body_bytes": 2}, "rss_mb": 500.0},
        ],
    }


def test_goals_from_a_recorded_run(recorded):
    goals = report.goals(recorded)
    assert [(g["goal"], g["value"], g["target"], g["met"]) for g in goals] == [
        ("served throughput vs stock handler (c=4)", 2.0, 2.0, True),  # 60 / 30
        ("served (c=4) / in-process (batch 8)", 0.8, 0.85, False),  # 60 / 75
        ("c=1 p50 minus in-process single-image latency", 28.0, 23.0, False),  # 48 − 20, allowed 20 + 3
        ("c=1 p50 minus in-process latency minus the empty handler's c=1 p50", 5.0, 3.0, False),  # 48 − 20 − 23
    ]
    assert goals[1]["detail"].endswith("TorchServe with an empty handler: 1000.0 req/s")
    assert goals[2]["detail"].endswith("TorchServe with an empty handler: p50 23.0 ms")
    assert goals[3]["detail"] == "tsvision-onnx: 48.0 − 20.0 − 23.0 ms"
    without_floor = {**recorded, "results": recorded["results"][:2]}
    assert [g["goal"] for g in report.goals(without_floor)][-1] == "c=1 p50 minus in-process single-image latency"


def test_tables_and_plot_from_a_recorded_run(recorded, tmp_path):
    recorded["goals"] = report.goals(recorded)
    assert [(r["format"], r["ratio"], r["json_req_s"]) for r in report.picture_rows(recorded)] == [
        ("png", 0.1, 60.0), ("jpeg", 0.25, 60.0)]
    table = report.markdown(recorded)
    assert "| classification | tsvision-onnx | 50.0 | 75.0 | 20.0 | 60.0 | 48/55/60 | 65/70/80 | 349 | 600 |" in table
    assert "| classification | stock-torchscript | – | – | 15.0 | 30.0 | 60/70/75 | 130/140/150 | 194 | 890 |" in table
    assert "| classification | tsvision-onnx | png | 60.0 | 6.0 | 0.10 | 600 | 1,200,000 |" in table
    assert ("| c=1 p50 minus in-process latency minus the empty handler's c=1 p50 | classification | 5 ms | ≤ 3 ms | "
            "**no** |") in table
    assert "| served throughput vs stock handler (c=4) | classification | 2 × | ≥ 2 × | yes |" in table
    report.plot(recorded, tmp_path / "throughput.png")
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = tmp_path / "performance.md"
    doc.write_text("head\n<!-- bench:start -->\nOLD\n<!-- bench:end -->\ntail\n")
    assert report.update_docs(doc, table)
    assert doc.read_text() == f"head\n<!-- bench:start -->\n{table}<!-- bench:end -->\ntail\n"
    assert not report.update_docs(tmp_path / "missing.md", table)


def test_the_core_step_measures_ours_the_stock_peer_and_the_floor_last():
    from benchmarks.run import parse_overrides, variants

    chosen = variants(["classification", "detection"], ["onnx"], stock=True)
    assert [(v["task"], v["variant"]) for v in chosen] == [
        ("classification", "tsvision-onnx"), ("classification", "stock-torchscript"),
        ("detection", "tsvision-onnx"), ("detection", "stock-torchscript"), ("torchserve", "empty-handler")]
    assert [v["variant"] for v in variants(["segmentation"], ["onnx", "torchscript"], stock=False, floor=False)] == [
        "tsvision-onnx", "tsvision-torchscript"]
    assert parse_overrides(["threads=1", "mask_format=rle", "classes=[1, 2]"]) == {
        "threads": 1, "mask_format": "rle", "classes": [1, 2]}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["threads"])


# -- benchmarks.load: wrk against a local HTTP server ---------------------------------------------
@pytest.fixture
def http_server() -> Iterator[str]:
    """127.0.0.1 on a free port: POST /ok answers 200 with a 1000-byte body, POST /fail 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"x" * 1000
            self.send_response(200 if self.path == "/ok" else 500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_wrk_points_count_answers_and_failures(http_server, tmp_path):
    from benchmarks.load import drain, run_wrk

    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run scripts/setup.sh")
    body = tmp_path / "photo.jpg"
    body.write_bytes(b"\xff\xd8" + b"0" * 5000)
    point = run_wrk(f"{http_server}/ok", body, {"Authorization": "Bearer k"}, connections=2, seconds=1)
    assert point["connections"] == 2 and point["requests"] > 0 and point["failed"] == 0
    assert point["throughput"] > 0 and point["bytes_per_response"] > 1000  # the body and the status line and headers
    assert 0 < point["latency_ms"]["p50"] <= point["latency_ms"]["p95"] <= point["latency_ms"]["p99"]
    failing = run_wrk(f"{http_server}/fail", body, {}, connections=1, seconds=1)
    assert failing["requests"] > 0 and failing["failed"] == failing["errors"]["status"] == failing["requests"]
    assert failing["throughput"] == 0
    assert drain(f"{http_server}/ok", body, {}) > 0


# -- our handler, the stock handler and the floor in-process, on a tiny model ----------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A 6-class classifier (TorchScript), its settings and labels, and the same weights for the stock handler."""
    import torch
    from torch import nn

    from benchmarks.models import stock_module
    from tsvision.tools.export.exportable import Exportable

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4,
                                                                                                                    6))
    sample = torch.rand(1, 3, 32, 32)
    torch.jit.trace(model.eval(), sample).save(str(folder / "model.pt"))
    labels = [f"class{i}" for i in range(6)]
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "settings.json").write_text(json.dumps({"task": "classification", "input_size": 32}))
    exportable = Exportable("classification", "tiny", model.eval(), {"input_size": 32}, labels, False, ["logits"])
    stock_module(exportable, sample).save(str(folder / "stock.pt"))
    (folder / "index_to_name.json").write_text(json.dumps({str(i): name for i, name in enumerate(labels)}))
    return {"folder": folder, "labels": labels}


def test_inprocess_throughput_through_the_handler(tiny):
    from benchmarks.inprocess import answer_all, close, load_task, measure_batches
    from benchmarks.photo import make_photo

    photo = make_photo()
    worker = load_task(tiny["folder"], "model.pt", {"top_k": 3})
    try:
        answer = worker.predict([{"body": photo}], [{"body": {"content-type": "image/jpeg"}}])[0]
        labels = [(entry["label"], entry["index"]) for entry in answer.json()]
        assert answer.status == 200 and labels == [(f"class{index}", index) for _, index in labels]
        assert len(answer.json()) == 3  # the override reached the handler's settings
        measured = measure_batches(worker, photo, [1, 2], seconds=0.05)
        assert [m["batch_size"] for m in measured] == [1, 2]
        assert all(m["batches"] >= 3 and m["images_per_s"] > 0 and m["latency_ms_p50"] > 0 for m in measured)
        with pytest.raises(RuntimeError, match="in-process answer 400"):
            answer_all(worker, b"not an image", 2)
    finally:
        close(worker)


def test_the_stock_and_empty_handlers_answer_in_process(tiny):
    from ts.torch_handler.image_classifier import ImageClassifier

    from benchmarks.floor_handler import EmptyHandler
    from benchmarks.photo import make_photo
    from tsvision.tools.archive.local_worker import LocalWorker

    stock = LocalWorker(ImageClassifier, tiny["folder"], "stock.pt", {"batchSize": 2})
    answers = stock.predict([{"body": make_photo()}, {"body": make_photo()}])
    assert [a.status for a in answers] == [200, 200]
    top5 = answers[0].body
    assert len(top5) == 5 and set(top5) <= set(tiny["labels"])  # the stock classifier's {label: probability}
    floor = LocalWorker(EmptyHandler, tiny["folder"], "model.pt", {"batchSize": 2})
    assert [a.body for a in floor.predict([{"body": b"a"}, {"body": b"b"}])] == ["{}", "{}"]


def test_quantize_step_measures_fp32_and_int8_in_process(tmp_path):
    """``benchmarks.quantize.measure`` on a tiny ONNX classifier and its int8 file (``quantize_onnx``)."""
    import torch
    from torch import nn

    from benchmarks.photo import make_photo
    from benchmarks.quantize import INT8_FILE, measure
    from tsvision.tools.export.quantize import quantize_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 6))
    sample = torch.rand(4, 3, 32, 32)
    torch.onnx.export(model.eval(), (sample[:2],), str(tmp_path / "model.onnx"), input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                      verbose=False, external_data=False)
    quantize_onnx(tmp_path / "model.onnx", tmp_path / INT8_FILE, sample.numpy())
    (tmp_path / "labels.json").write_text(json.dumps([f"class{i}" for i in range(6)]))
    (tmp_path / "settings.json").write_text(json.dumps({"task": "classification", "input_size": 32}))
    agreement = {"top1_agreement": 1.0}
    (tmp_path / "report.json").write_text(json.dumps(
        {"quantized": {"agreement": agreement, "fp32_size_bytes": 2000, "size_bytes": 900}}))
    result = measure("classification", tmp_path, make_photo(), [1, 8], rounds=2)
    assert result["agreement_on_calibration_photos"] == agreement
    assert result["sizes_bytes"] == {"fp32": 2000, "int8": 900}
    for size in (1, 8):
        point = result[f"batch_{size}"]
        ms = point["ms_per_batch"]
        assert set(ms) == {"pipeline_fp32", "pipeline_int8", "model_fp32", "model_int8"} and min(ms.values()) > 0
        assert point["pipeline_speedup"] == round(ms["pipeline_fp32"] / ms["pipeline_int8"], 3)
        assert point["model_speedup"] == round(ms["model_fp32"] / ms["model_int8"], 3) and point["rounds"] == 2


def test_stock_and_floor_archives_carry_the_batch_settings(tmp_path):
    import yaml

    from benchmarks.models import build_floor

    archive = build_floor("bench_empty", tmp_path / "store", batch_size=8, delay=20, workers=1)
    assert archive == tmp_path / "store" / "bench_empty.mar"
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        assert "floor_handler.py" in names and "MAR-INF/MANIFEST.json" in names
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert config == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 20, "responseTimeout": 120}


def test_heavy_runs_wait_for_each_other(tmp_path):
    """The benchmark and the soak test share one lock: a second holder waits, then gives up."""
    lock = tmp_path / "heavy.lock"
    outcome = []

    def second_run():
        try:
            with heavy_run(timeout_s=1.5, path=lock):
                outcome.append("ran")
        except TimeoutError as error:
            outcome.append(str(error))

    with heavy_run(path=lock):
        waiter = threading.Thread(target=second_run)
        waiter.start()
        waiter.join(timeout=30)
    assert outcome == [f"{lock} held by another heavy run for 2 s"]
    second_run()  # released: the next run gets it at once
    assert outcome[-1] == "ran"


def test_scaling_configurations_and_tables():
    """The scaling benchmark's pure parts: configuration names, thread shares, the goal's ratio, the table."""
    from benchmarks.scaling import markdown, parse_config, ratio_at, threads_for

    assert parse_config("w2b8") == (2, 8, None) and parse_config(" w1b16") == (1, 16, None)  # None: the task's default
    assert parse_config("w1b8p4") == (1, 8, 4) and parse_config("w1b8p0") == (1, 8, 0)
    for bad in ("2x8", "w0b8", "w2b0", "w2", "w1b8p", "w1b8p-1"):
        with pytest.raises(ValueError, match="expected wWbB"):
            parse_config(bad)
    assert threads_for(1, 2) == 2 and threads_for(2, 2) == 1 and threads_for(4, 2) == 1
    points = [{"connections": 1, "throughput": 30.0, "latency_ms": {"p99": 40.0}},
              {"connections": 32, "throughput": 180.0, "latency_ms": {"p99": 250.0}}]
    assert ratio_at(points, 32, 200.0) == 0.9 and ratio_at(points, 64, 200.0) is None
    data = {"config": {"clients": [1, 32]},
            "results": {"classification": {"inprocess_best": {"images_per_s": 200.0, "batch_size": 8},
                                           "served": {"w1b8": points}}}}
    table = markdown(data)
    assert "| w1b8 | 30.0 | 180.0 | 40 | 250 | 0.9 |" in table and "in-process best 200.0 img/s at batch 8" in table


# -- benchmarks.families: its pure functions (no model, no server) ---------------------------------
def _det(index, score, box, **extra):
    return {"index": index, "score": score, "box": box, **extra}


def test_families_compare_answers_twins_near_ties_and_differences():
    import numpy as np

    from benchmarks.families import answers_agree, compare_answers

    theirs = [_det(0, 0.9, [10, 10, 50, 50]), _det(2, 0.25293, [0, 0, 20, 20]), _det(0, 0.2529, [30, 30, 60, 60])]
    # near-tied scores (within 1e-3) may swap places; boxes within 1 px
    ours = [_det(0, 0.9004, [10.5, 10, 50, 49.2]), _det(0, 0.2530, [30, 30, 60, 60]), _det(2, 0.25293, [0, 0, 20, 20])]
    figures = compare_answers(ours, theirs)
    assert figures["same"] and figures["matched"] == 3 and figures["in_order"]
    assert figures["box_px"] == 0.8 and abs(figures["score"] - 4e-4) < 1e-9
    assert answers_agree(figures)
    # a box 2 px away has no twin; a different class out of order is not a near tie
    moved = compare_answers([_det(0, 0.9, [12, 10, 50, 50])] + ours[1:], theirs)
    assert not moved["same"] and moved["matched"] == 2
    swapped = compare_answers([theirs[1], theirs[0], theirs[2]], theirs)
    assert swapped["matched"] == 3 and not swapped["in_order"] and not swapped["same"]
    assert not answers_agree(compare_answers([], []))  # nothing found is no evidence
    # masks: pixel agreement of twins; keypoints: largest x/y gap (not the scores)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    other = mask.copy()
    other[9, 9] = True
    masked = compare_answers([_det(1, 0.5, [2, 2, 5, 5], mask=mask)], [_det(1, 0.5, [2, 2, 5, 5], mask=other)])
    assert masked["mask_agreement"] == 0.99 and not answers_agree(masked)
    points = compare_answers([_det(1, 0.5, [0, 0, 9, 9], keypoints=[[1, 1, 0.9], [5, 5, 3.0]])],
                             [_det(1, 0.5, [0, 0, 9, 9], keypoints=[[1, 2.5, 0.1], [5, 5, -3.0]])])
    assert points["keypoint_px"] == 1.5 and answers_agree(points) and not answers_agree(points, point_tol=1.0)


def test_families_stock_answers_and_threshold():
    from benchmarks.families import above, from_stock

    labels = ["__background__", "person", "bicycle"]
    stock = [{"person": [1.0, 2.0, 3.0, 4.0], "score": 0.9}, {"bicycle": [0, 0, 5, 5], "score": 0.5}]
    assert from_stock(stock, labels) == [{"index": 1, "label": "person", "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]},
                                         {"index": 2, "label": "bicycle", "score": 0.5, "box": [0.0, 0.0, 5.0, 5.0]}]
    assert [d["score"] for d in above([_det(1, 0.9, []), _det(1, 0.5, []), _det(1, 0.4999, [])], 0.5)] == [0.9, 0.5]


def test_families_closed_loop_goals_and_table():
    from benchmarks.families import closed_loop, goal_rows, markdown

    calls = []
    point = closed_loop(lambda: calls.append(1), 4, seconds=0.0, min_calls=3, warmup=2)
    assert len(calls) == 5 and point["calls"] == 3 and point["batch_size"] == 4 and point["images_per_s"] > 0
    results = [
        {"family": "yolov8n", "served": {"req_s": 30.0, "p50_ms": 250.0, "inprocess_img_s": 35.0},
         "references": [{"name": "ultralytics", "single_img_s": 20.0, "single_p50_ms": 50.0, "best_img_s": 40.0,
                         "best_batch": 8, "answers_summary": "astronaut: 5/5"}]},
        {"family": "fasterrcnn", "served": {"req_s": 10.0, "p50_ms": 700.0},
         "references": [{"name": "eager", "single_img_s": 12.5, "single_p50_ms": 80.0, "best_img_s": 12.5,
                         "best_batch": 1},
                        {"name": "stock served", "single_img_s": 5.0, "single_p50_ms": 1500.0}]},
    ]
    rows = goal_rows(results)
    assert [(r["family"], r["met"], r["ratio"], r["met_best"], r["ratio_best"]) for r in rows] == [
        ("yolov8n", True, 1.5, False, 0.75), ("fasterrcnn", False, 0.8, False, 0.8), ("fasterrcnn", True, 2.0, None,
                                                                                      None)]
    table = markdown(rows)
    assert table.count("\n") == 5
    assert ("| yolov8n | ultralytics | 20.0 (50) | 40.0 (b8) | 30.0 (250) | 35.0 | 1.50 × | **met** | "
            "0.75 × not met |") in table
    assert ("| fasterrcnn | stock served | 5.0 (1500) | – | 10.0 (700) | – | 2.00 × | **met** | – | "
            "not compared |") in table


# -- benchmarks.suite: issue 18's goals from the steps' results (no measurement) -----------------
def _suite_results() -> dict:
    scaling = {"results": {"segmentation": {"inprocess_best": {"images_per_s": 10.0, "batch_size": 4},
                                            "served_vs_inprocess_c32": {"w1b8p4": 0.7, "w1b8p0": 0.65, "w2b4": 0.88,
                                                                        "w2b8": 0.95, "w1b16": None}}}}
    core = {"config": {"picture_clients": 8, "concurrency": [1, 8]},
            "goals": [{"goal": "c=1 p50 minus in-process latency minus the empty handler's c=1 p50",
                       "task": "detection",
                       "value": 4.2, "target": 3.0, "detail": "tsvision-onnx: 60.0 − 33.0 − 22.8 ms"},
                      {"goal": "c=1 p50 minus in-process latency minus the empty handler's c=1 p50",
                       "task": "detection",
                       "value": 9.0, "target": 3.0, "detail": "tsvision-torchscript: ..."}],
            "results": [{"task": "detection", "variant": "tsvision-onnx",
                         "served": [{"connections": 8, "throughput": 40.0, "bytes_per_response": 900}],
                         "pictures": {"png": {"throughput": 10.0, "bytes_per_response": 1_500_000, "failed": 0}}}]}
    quantize = {"results": {"classification": {"batch_1": {"pipeline_speedup": 0.94, "model_speedup": 0.9},
                                               "batch_8": {"pipeline_speedup": 1.6, "model_speedup": 1.7,
                                                           "ms_per_batch": {"model_fp32": 17.0, "model_int8": 10.0,
                                                                            "pipeline_fp32": 80.0,
                                                                            "pipeline_int8": 50.0}},
                                               "agreement_on_calibration_photos": {"top1_agreement": 0.875}}},
                "served": {"classification": {"int8_vs_fp32": 1.01}}}
    quantize["results"]["classification"]["batch_1"]["ms_per_batch"] = {"model_fp32": 4.5, "model_int8": 5.0,
                                                                        "pipeline_fp32": 16.9, "pipeline_int8": 18.0}
    families = {"goals": [{"family": "yolov8n", "reference": "ultralytics", "ratio": 1.1, "ours_req_s": 22.0,
                           "reference_img_s": 20.0, "answers": "5/5"}]}
    before_after = {"ref": "13e7cc7", "results": {"detection": {"after_vs_before": 0.93, "after_median": 28.0,
                                                                "before_median": 30.1, "after_req_s": [28.0] * 4}}}
    return {"scaling": scaling, "core": core, "quantize": quantize, "families": families, "before_after": before_after}


def test_suite_goals_from_every_step():
    from benchmarks.suite import goals, goals_markdown

    rows = goals(_suite_results())
    got = [(r["goal"].split(" ")[0], r["task"], r["value"], r["met"]) for r in rows]
    assert got == [("1.", "segmentation", 0.88, False), ("1.", "segmentation", 0.95, True),
                   ("2.", "detection", 4.2, False),  # the ONNX row only
                   ("3.", "classification", 1.6, True),  # the best batch's whole pipeline
                   ("4.", "yolov8n", 1.1, True),
                   ("5.", "detection", 0.25, None),  # a cost: no target
                   ("5.", "detection", 0.93, False)]
    assert rows[0]["detail"].startswith("w2b4; in-process best 10.0 img/s")  # the default: 2 workers, batch 4
    assert "w2b8; tried: w1b8p4 0.70, w1b8p0 0.65, w2b4 0.88, w2b8 0.95" in rows[1]["detail"]
    assert "served ×1.01" in rows[3]["detail"]
    table = goals_markdown(rows, Path("/tmp/suite-x"), "2026-11-30 16:00 UTC")
    assert "| 2. c=1 p50 over in-process and TorchServe's floor | detection | 4.2 ms | ≤ 3 ms | **no** |" in table
    assert "| (no target) |" in table and "1,500,000 vs 900 B per answer" in table and "`suite-x/`" in table
    assert goals({}) == []


def test_suite_goals_of_issue_28():
    from benchmarks.suite import goals28

    found = _suite_results()
    found["core"]["goals"] += [
        {"goal": "served throughput vs stock handler (c=32)", "task": "classification", "value": 2.1,
         "target": 2.0, "detail": "tsvision-onnx 190.0 vs stock 90.0 req/s"},
        {"goal": "served throughput vs stock handler (c=32)", "task": "classification", "value": 1.6,
         "target": 2.0, "detail": "tsvision-torchscript 144.0 vs stock 90.0 req/s"},
        {"goal": "served throughput vs stock handler (c=32)", "task": "detection", "value": 7.0,
         "target": 1.5, "detail": "tsvision-onnx 70.0 vs stock 10.0 req/s"}]
    got = [(r["goal"].split(" ")[0], r["task"], r["value"], r["target"], r["met"]) for r in goals28(found)]
    assert got == [("1.", "yolov8n", 1.1, 1.2, False),  # issue 18 asked ≥ 1, issue 28 asks ≥ 1.2
                   ("2.", "classification (onnx)", 2.1, 2.5, False),
                   ("2.", "classification (torchscript)", 1.6, 1.5, True),
                   ("3.", "segmentation", 0.88, 0.9, False)]  # the default configuration (w2b4) only
    assert goals28({}) == []


def test_budget_table_subtracts_the_floor_and_the_stages():
    from benchmarks.budget import markdown

    stages = {"decode": 2.0, "resize": 1.0, "collate": 0.5, "model": 3.0, "post": 0.2, "encode": 0.3}
    cpu = {"frontend_cpu_ms": 1.5, "workers_cpu_ms": 0.5}
    data = {"started": "2026-12-03 17:00 UTC", "cores": 2,
            "inprocess": {"classification": {"batch_1": stages, "batch_8": stages}},
            "served": {"floor": {"c1": {"req_s": 40.0, "p50_ms": 22.0}, "c16": {"req_s": 400.0, **cpu}},
                       "classification": {"c1": {"req_s": 30.0, "p50_ms": 30.0},
                                          "c16": {"req_s": 100.0, "frontend_cpu_ms": 1.8,
                                                  "workers_cpu_ms": 9.5}}}}
    table = markdown(data)
    # 1 client: 30 ms less the floor's 22 and the stages' 7: 1 ms
    assert "| classification | 1 | 30.0 ms p50 | 22.0 ms p50 | | | 2.0 | 1.0 | 0.5 | 3.0 | 0.2 | 0.3 | 1.0 |" in table
    # 16 clients: the worker's 9.5 ms of CPU less the stages' 7: 2.5 ms
    assert ("| classification | 16 | 100.0 req/s | 400 req/s: 1.5 + 0.5 ms CPU | 1.8 | 9.5 | 2.0 | 1.0 | 0.5 | 3.0 "
            "| 0.2 | 0.3 | 2.5 |") in table


def test_suite_quantize_table_names_where_the_agreement_was_measured():
    from benchmarks.suite import quantize_markdown

    quantize = _suite_results()["quantize"]
    table = quantize_markdown(quantize)
    assert "| agreement on the calibration photos |" in table
    assert '| classification | 8 | 17.0 | 10.0 | 1.7 | 80.0 | 50.0 | 1.6 | 1.01 | {"top1_agreement": 0.875} |' in table
    older = quantize["results"]["classification"]
    older["agreement_on_photo"] = older.pop("agreement_on_calibration_photos")  # a run before the agreement moved
    assert "| agreement on the photo |" in quantize_markdown(quantize)


def test_suite_steps_and_defaults():
    from benchmarks.suite import DEFAULT_STEPS, parse_args, steps

    assert set(DEFAULT_STEPS) < set(steps()) and "before_after" not in DEFAULT_STEPS  # a study, run when named
    assert parse_args([]).only == "core,scaling,quantize,families,budget"
    assert steps("py")["before_after"](Path("out"), ["--rounds", "1"]) == [
        "py", "-m", "benchmarks.studies.before_after", "--out", "out", "--rounds", "1"]
    assert steps("py")["families"](Path("out"), []) == ["py", "-m", "benchmarks.families", "--out", "out"]


def test_suite_reads_step_folders_and_rewrites_marked_sections(tmp_path):
    from benchmarks.suite import load_results, update_docs

    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "results.json").write_text(json.dumps(_suite_results()["families"]))
    (tmp_path / "families" / "results.md").write_text("| the families table |\n")
    (tmp_path / "quantize").mkdir()
    for stamp in ("20261130-100000", "20261130-110000"):
        (tmp_path / "quantize" / f"quantize-{stamp}.json").write_text(json.dumps({**_suite_results()["quantize"],
                                                                                  "stamp": stamp}))
    found = load_results(tmp_path)
    assert set(found) == {"families", "quantize"} and found["quantize"]["stamp"] == "20261130-110000"  # the latest
    doc = tmp_path / "performance.md"
    doc.write_text("intro\n<!-- goals18:start -->\nSTALE\n<!-- goals18:end -->\nmiddle\n"
                   "<!-- families:start -->\nSTALE\n<!-- families:end -->\nend\n")
    written = update_docs(found, [], tmp_path, "now", doc)
    assert written == ["goals18", "families"]  # quantize has no markers in this doc
    text = doc.read_text()
    assert "STALE" not in text and "| the families table |" in text
    assert text.startswith("intro\n") and text.endswith("end\n")


def test_the_model_ceiling_study_measures_one_session_and_sessions_at_once(exports, capsys):
    from benchmarks.studies.model_ceiling import main

    model = exports / "classification" / "model.onnx"
    assert main(["--model", str(model), "--size", "224", "--batches", "1,2", "--threads", "1", "--processes", "2",
                 "--rounds", "2", "--seconds", "0.6", "--turns", "3"]) == 0
    found = json.loads(capsys.readouterr().out)
    alone = found["alone"]["1 thread(s), batch 2"]
    assert alone["ms_per_image"] > 0 and alone["images_per_s"] == pytest.approx(1000 / alone["ms_per_image"], rel=0.02)
    together = found["together"]["2 one-thread processes, batch 2"]
    assert len(together["turns"]) == 3 and min(together["turns"]) > 0
    assert together["images_per_s"] == sorted(together["turns"])[1]
    assert [len(rates) for rates in together["each"]] == [2, 2, 2] and min(map(min, together["each"])) > 0
    assert together["turns"] == pytest.approx([sum(rates) for rates in together["each"]], abs=0.11)
    assert "split_head" not in found


def test_the_model_ceiling_study_measures_the_graph_cut_at_yolov8s_head_beside_the_whole(tmp_path, capsys):
    import onnx

    from benchmarks.studies.model_ceiling import cut_at_the_head, main
    from tests.unit.test_yolo_head import SIZE, export

    model = export(tmp_path)  # ultralytics' own Detect head, exported at SIZE×SIZE
    cut = onnx.load_from_string(cut_at_the_head(model))
    assert len(onnx.load(str(model)).graph.output) == 1 and len(cut.graph.output) == 2  # boxes' bins, class logits
    assert not any(node.op_type == "Softmax" for node in cut.graph.node)  # the DFL is left to the decoder
    assert main(["--model", str(model), "--size", str(SIZE), "--batches", "1", "--threads", "1", "--processes", "1",
                 "--rounds", "3", "--seconds", "0.3", "--turns", "1", "--split-head"]) == 0
    found = json.loads(capsys.readouterr().out)
    whole, cut = found["alone"]["1 thread(s), batch 1"], found["split_head"]["alone"]["1 thread(s), batch 1"]
    assert whole["ms_per_image"] > 0 and cut["ms_per_image"] > 0
    speed_up = found["split_head"]["speed_up"]
    assert set(speed_up) == {"alone: 1 thread(s), batch 1", "together: 1 one-thread processes, batch 1"}
    assert speed_up["alone: 1 thread(s), batch 1"] == pytest.approx(cut["images_per_s"] / whole["images_per_s"],
                                                                      abs=0.002)


def test_the_model_ceiling_study_refuses_to_split_a_graph_without_yolov8s_head(exports):
    from benchmarks.studies.model_ceiling import main

    with pytest.raises(SystemExit, match="not a YOLOv8 detection graph"):
        main(["--model", str(exports / "classification" / "model.onnx"), "--split-head"])

"""The performance harness end to end in a tiny mode: real exports, real archives (ours and the
stock handler's), a real TorchServe and real wrk load. Asserts what was measured, never how fast."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from benchmarks.lock import heavy_run
from benchmarks.run import main as bench_main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run scripts/setup.sh")
    out = tmp_path_factory.mktemp("bench")
    assert bench_main(["--tasks", "classification", "--backends", "onnx", "--quick", "--seconds", "2", "--warmup", "1",
                       "--shape-warmup", "3", "--inprocess-seconds", "0.5",
                       "--concurrency", "1,4", "--batch-sizes", "1,2", "--picture-clients", "4", "--exports", str(out / "exports"),
                       "--out", str(out / "results")]) == 0
    data = json.loads((out / "results" / "results.json").read_text())
    data["_out"] = out / "results"
    return data


def test_results_cover_ours_and_the_stock_peer(bench):
    assert {r["variant"] for r in bench["results"]} == {"tsvision-onnx", "stock-torchscript", "empty-handler"}
    assert bench["machine"]["cores"] >= 1 and bench["machine"]["cpu"]
    assert bench["config"]["batch_size"] == 8 and bench["config"]["max_batch_delay"] == 20


def test_inprocess_throughput_by_batch_size(bench):
    ours = next(r for r in bench["results"] if r["variant"] == "tsvision-onnx")
    assert [r["batch_size"] for r in ours["inprocess"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["latency_ms_p50"] > 0 for r in ours["inprocess"])


def test_served_points_answered_without_failures(bench):
    for result in bench["results"]:
        assert [s["connections"] for s in result["served"]] == [1, 4]
        # A shared, busy machine can leave a short point with no completed request; not all of them.
        assert sum(point["requests"] for point in result["served"]) > 0, result["served"]
        for point in result["served"]:
            assert point["failed"] == 0, point
            if point["requests"]:
                assert point["throughput"] > 0 and point["bytes_per_response"] > 0
                latency = point["latency_ms"]
                assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        assert result["rss_mb"] > 50  # a worker with torch loaded


def test_the_stock_handler_answered_the_photo(bench):
    stock = next(r for r in bench["results"] if r["variant"] == "stock-torchscript")
    assert stock["probe"]["status"] == 200
    assert stock["probe"]["json_items"] == 5  # the stock classifier's {label: probability} top 5
    ours = next(r for r in bench["results"] if r["variant"] == "tsvision-onnx")
    assert ours["probe"]["status"] == 200 and ours["probe"]["json_items"] == 5
    assert ours["probe"]["excerpt"].startswith('[{"label"')


def test_the_empty_handler_measures_torchserve_alone(bench):
    floor = next(r for r in bench["results"] if r["variant"] == "empty-handler")
    assert floor["probe"]["status"] == 200 and floor["probe"]["excerpt"] == "{}"
    assert "inprocess" not in floor  # nothing of ours runs in it
    single = next(g for g in bench["goals"] if g["goal"].startswith("c=1 p50"))
    p50 = next(s for s in floor["served"] if s["connections"] == 1)["latency_ms"]["p50"]
    assert single["detail"].endswith(f"TorchServe with an empty handler: p50 {p50:.1f} ms")


def test_latency_over_the_floor_and_picture_points(bench):
    """Issue 18's goal 2 subtracts in-process latency and the empty handler's p50; goal 5 serves pictures beside JSON."""
    ours = next(r for r in bench["results"] if r["variant"] == "tsvision-onnx")
    floor = next(r for r in bench["results"] if r["variant"] == "empty-handler")
    single = next(s for s in ours["served"] if s["connections"] == 1)
    if single["latency_ms"]:
        row = next(g for g in bench["goals"] if g["goal"].startswith("c=1 p50 minus in-process latency minus"))
        expected = (single["latency_ms"]["p50"] - ours["inprocess"][0]["latency_ms_p50"]
                    - next(s for s in floor["served"] if s["connections"] == 1)["latency_ms"]["p50"])
        assert row["value"] == round(expected, 1) and row["target"] == 3.0 and row["unit"] == "ms"
    assert set(ours["pictures"]) == {"png", "jpeg"} and "pictures" not in floor
    json_bytes = next(s for s in ours["served"] if s["connections"] == 4)["bytes_per_response"]
    for kind, point in ours["pictures"].items():
        assert point["failed"] == 0 and point["connections"] == 4, point
        if point["requests"]:
            assert point["bytes_per_response"] > 20 * json_bytes  # a 1280x720 picture, not the JSON top-5
    table = (bench["_out"] / "results.md").read_text()
    assert "| classification | tsvision-onnx | png |" in table and "| classification | tsvision-onnx | jpeg |" in table


def test_goals_table_and_plot_written(bench):
    goals = {g["goal"] for g in bench["goals"]}
    assert any(g.startswith("served throughput vs stock handler") for g in goals)
    assert any(g.startswith("c=1 p50") for g in goals)
    for goal in bench["goals"]:
        assert goal["value"] is not None and goal["met"] in (True, False) and goal["detail"]
    table = (bench["_out"] / "results.md").read_text()
    assert "| classification | stock-torchscript |" in table and "| goal |" in table
    assert (bench["_out"] / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
            "results": {"classification": {"inprocess_best": {"images_per_s": 200.0, "batch_size": 8}, "served": {"w1b8": points}}}}
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
         "references": [{"name": "eager", "single_img_s": 12.5, "single_p50_ms": 80.0, "best_img_s": 12.5, "best_batch": 1},
                        {"name": "stock served", "single_img_s": 5.0, "single_p50_ms": 1500.0}]},
    ]
    rows = goal_rows(results)
    assert [(r["family"], r["met"], r["ratio"], r["met_best"], r["ratio_best"]) for r in rows] == [
        ("yolov8n", True, 1.5, False, 0.75), ("fasterrcnn", False, 0.8, False, 0.8), ("fasterrcnn", True, 2.0, None, None)]
    table = markdown(rows)
    assert table.count("\n") == 5
    assert "| yolov8n | ultralytics | 20.0 (50) | 40.0 (b8) | 30.0 (250) | 35.0 | 1.50 × | **met** | 0.75 × not met |" in table
    assert "| fasterrcnn | stock served | 5.0 (1500) | – | 10.0 (700) | – | 2.00 × | **met** | – | not compared |" in table


# -- benchmarks.suite: issue 18's goals from the steps' results (no measurement) -----------------
def _suite_results() -> dict:
    scaling = {"results": {"segmentation": {"inprocess_best": {"images_per_s": 10.0, "batch_size": 4},
                                            "served_vs_inprocess_c32": {"w1b8p0": 0.7, "w2b4": 0.95, "w2b8": None}}}}
    core = {"config": {"picture_clients": 8, "concurrency": [1, 8]},
            "goals": [{"goal": "c=1 p50 minus in-process latency minus the empty handler's c=1 p50", "task": "detection",
                       "value": 4.2, "target": 3.0, "detail": "tsvision-onnx: 60.0 − 33.0 − 22.8 ms"},
                      {"goal": "c=1 p50 minus in-process latency minus the empty handler's c=1 p50", "task": "detection",
                       "value": 9.0, "target": 3.0, "detail": "tsvision-torchscript: ..."}],
            "results": [{"task": "detection", "variant": "tsvision-onnx",
                         "served": [{"connections": 8, "throughput": 40.0, "bytes_per_response": 900}],
                         "pictures": {"png": {"throughput": 10.0, "bytes_per_response": 1_500_000, "failed": 0}}}]}
    quantize = {"results": {"classification": {"batch_1": {"pipeline_speedup": 0.94, "model_speedup": 0.9},
                                               "batch_8": {"pipeline_speedup": 1.6, "model_speedup": 1.7},
                                               "agreement_on_photo": {"top1_equal": 1}}},
                "served": {"classification": {"int8_vs_fp32": 1.01}}}
    families = {"goals": [{"family": "yolov8n", "reference": "ultralytics", "ratio": 1.1, "ours_req_s": 22.0,
                           "reference_img_s": 20.0, "answers": "5/5"}]}
    before_after = {"ref": "13e7cc7", "results": {"detection": {"after_vs_before": 0.93, "after_median": 28.0,
                                                                "before_median": 30.1, "after_req_s": [28.0] * 4}}}
    return {"scaling": scaling, "core": core, "quantize": quantize, "families": families, "before_after": before_after}


def test_suite_goals_from_every_step():
    from benchmarks.suite import goals, goals_markdown

    rows = goals(_suite_results())
    got = [(r["goal"].split(" ")[0], r["task"], r["value"], r["met"]) for r in rows]
    assert got == [("1.", "segmentation", 0.7, False), ("1.", "segmentation", 0.95, True),
                   ("2.", "detection", 4.2, False),  # the ONNX row only
                   ("3.", "classification", 1.6, True),  # the best batch's whole pipeline
                   ("4.", "yolov8n", 1.1, True),
                   ("5.", "detection", 0.25, None),  # a cost: no target
                   ("5.", "detection", 0.93, False)]
    assert rows[0]["detail"].startswith("w1b8p0; in-process best 10.0 img/s")  # segmentation's default is serial
    assert "w2b4; tried: w1b8p0 0.70, w2b4 0.95" in rows[1]["detail"] and "served ×1.01" in rows[3]["detail"]
    table = goals_markdown(rows, Path("/tmp/suite-x"), "2026-11-30 16:00 UTC")
    assert "| 2. c=1 p50 over in-process and TorchServe's floor | detection | 4.2 ms | ≤ 3 ms | **no** |" in table
    assert "| (no target) |" in table and "1,500,000 vs 900 B per answer" in table and "`suite-x/`" in table
    assert goals({}) == []


def test_suite_reads_step_folders_and_rewrites_marked_sections(tmp_path):
    from benchmarks.suite import load_results, update_docs

    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "results.json").write_text(json.dumps(_suite_results()["families"]))
    (tmp_path / "families" / "results.md").write_text("| the families table |\n")
    (tmp_path / "quantize").mkdir()
    for stamp in ("20261130-100000", "20261130-110000"):
        (tmp_path / "quantize" / f"quantize-{stamp}.json").write_text(json.dumps({**_suite_results()["quantize"], "stamp": stamp}))
    found = load_results(tmp_path)
    assert set(found) == {"families", "quantize"} and found["quantize"]["stamp"] == "20261130-110000"  # the latest
    doc = tmp_path / "performance.md"
    doc.write_text("intro\n<!-- goals18:start -->\nSTALE\n<!-- goals18:end -->\nmiddle\n"
                   "<!-- families:start -->\nSTALE\n<!-- families:end -->\nend\n")
    written = update_docs(found, [], tmp_path, "now", doc)
    assert written == ["goals18", "families"]  # quantize has no markers in this doc
    text = doc.read_text()
    assert "STALE" not in text and "| the families table |" in text and text.startswith("intro\n") and text.endswith("end\n")

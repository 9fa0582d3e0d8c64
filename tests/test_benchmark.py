"""The performance harness end to end in a tiny mode: real exports, real archives (ours and the
stock handler's), a real TorchServe and real wrk load. Asserts what was measured, never how fast."""

from __future__ import annotations

import json
import shutil
import threading

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
                       "--concurrency", "1,4", "--batch-sizes", "1,2", "--exports", str(out / "exports"),
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

    assert parse_config("w2b8") == (2, 8) and parse_config(" w1b16") == (1, 16)
    for bad in ("2x8", "w0b8", "w2b0", "w2"):
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

"""Reliability against real TorchServe instances (issue 7): snapshot restore, a worker killed under
load, and a soak. Each test starts its own TorchServe on free loopback ports and stops it by pid.

Figures are printed (run with ``-s`` to see them). ``TSVISION_SOAK_SECONDS`` sets the soak's length
(default 60 s in the suite; 300 for issue 7's 5-minute run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import psutil
import pytest
import requests

from benchmarks.lock import heavy_run
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.serve.manage import Management
from tsvision.tools.serve.server import DEVELOPMENT_PROFILE, TorchServe
from tests.conftest import jpeg

pytestmark = pytest.mark.e2e
MODEL = "rel_classifier"
TOP_K = {"1.0": 5, "2.0": 3, "3.0": 1}  # the length of an answer tells which version answered
BATCH_SIZE = 4
SOAK_SECONDS = float(os.environ.get("TSVISION_SOAK_SECONDS", "60"))  # issue 7 measured 300 s: see docs/security.md


@pytest.fixture(scope="module")
def store(exports, tmp_path_factory) -> Path:
    """Three versions of the ONNX classifier, batch size 4, differing in top_k only."""
    store = tmp_path_factory.mktemp("reliability_store")
    for version, top_k in TOP_K.items():
        assert archive_main(["--model", str(exports / "classification" / "model.onnx"), "--settings",
                             str(exports / "classification" / "settings.json"), "--name", MODEL, "--version", version,
                             "--archive-file", f"{MODEL}-{version}", "--store", str(store), "--batch-size", str(BATCH_SIZE),
                             "--max-batch-delay", "20", "--set", f"top_k={top_k}"]) == 0
    return store


@pytest.fixture(scope="module")
def photo(photos) -> bytes:
    return jpeg(photos["chelsea"])  # 451×300, a real photo


# -- load ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    sent: float  # when the request was due (paced) or sent (closed loop), time.monotonic()
    done: float
    status: int  # 0: no HTTP answer (connection error or timeout)


class Client:
    """One keep-alive session per thread, posting the photo to the model's default version."""

    def __init__(self, server: TorchServe, body: bytes) -> None:
        self.url = f"{server.inference_url}/predictions/{MODEL}"
        self.headers = {"Content-Type": "image/jpeg", **server.headers("inference")}
        self.verify = server.verify
        self.body = body
        self._local = threading.local()

    def send(self, due: Optional[float] = None) -> Outcome:
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        sent = time.monotonic() if due is None else due
        try:
            status = session.post(self.url, data=self.body, headers=self.headers, timeout=30, verify=self.verify).status_code
        except requests.RequestException:
            status = 0
        return Outcome(sent, time.monotonic(), status)


class ClosedLoop:
    """``threads`` clients each sending the next request as soon as the last is answered, until
    ``stop()`` or ``max_seconds``, whichever comes first."""

    def __init__(self, client: Client, threads: int, max_seconds: float) -> None:
        self.client, self.outcomes = client, []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            self.outcomes.append(self.client.send())

    def __enter__(self) -> "ClosedLoop":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def paced(client: Client, rate: float, seconds: float, threads: int = 8) -> List[Outcome]:
    """Open loop: a request due every 1/rate seconds for ``seconds``, whether or not earlier ones were
    answered; latency counts from when a request was due. A request still queued 30 s after it was
    due is not sent and counts as failed, so a stuck server cannot stretch the run."""

    def one(due: float) -> Outcome:
        if time.monotonic() > due + 30:
            return Outcome(due, time.monotonic(), 0)
        return client.send(due)

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        futures = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            futures.append(pool.submit(one, due))
        return [future.result() for future in futures]


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def describe_failures(outcomes: List[Outcome]) -> str:
    counts = {}
    for outcome in outcomes:
        if outcome.status != 200:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return ", ".join(f"{n}× {'no answer' if status == 0 else status}" for status, n in sorted(counts.items())) or "none"


# -- restore -------------------------------------------------------------------------------

def test_versions_defaults_and_workers_survive_a_stop_and_a_restart_from_the_snapshot(store, photo, tmp_path):
    """Development profile: 1.0 loaded at start, 2.0 and 3.0 registered, 2.0 scaled to 2 workers and
    made the default (neither the first nor the last version). ``torchserve --stop``, then a start
    without ``--ncs`` in the same working directory restores all of it."""
    workdir = tmp_path / "torchserve"
    server = TorchServe(store, workdir, models=[f"{MODEL}-1.0.mar"], overrides=DEVELOPMENT_PROFILE)
    try:
        server.start(snapshot=True)
        management = Management(server.management_url, workdir / "key_file.json")
        for version in ("2.0", "3.0"):
            management.register(f"{MODEL}-{version}.mar", store=store)
        management.scale(MODEL, "2.0", 2)
        management.set_default(MODEL, "2.0")
        before = management.summary()
        assert [(v["version"], v["default"], v["ready"]) for v in before[MODEL]] == [
            ("1.0", False, 1), ("2.0", True, 2), ("3.0", False, 1)]
        server.stop_with_cli()
        assert server.snapshots() and server.snapshots()[-1].name.endswith("-shutdown.cfg"), \
            f"no shutdown snapshot: {[p.name for p in server.snapshots()]}"

        # A new TorchServe object, as after a reboot: its free ports are replaced by the snapshot's,
        # and ``models`` ("all") is not used.
        server = TorchServe(store, workdir, overrides=DEVELOPMENT_PROFILE)
        started = time.monotonic()
        server.start(snapshot=True)
        after = Management(server.management_url, workdir / "key_file.json").summary()
        print(f"\nrestored in {time.monotonic() - started:.1f} s from {server.snapshots()[-2].name}: {after}")
        assert after == before
        answer = server.predict(MODEL, photo, content_type="image/jpeg")
        assert answer.status_code == 200 and len(answer.json()) == TOP_K["2.0"], "the default is not 2.0 after restart"
    finally:
        server.stop()


# -- a worker killed under load ------------------------------------------------------------

def test_a_worker_killed_under_steady_load_fails_at_most_one_batch_and_comes_back(store, photo, tmp_path):
    """Six client threads (more than the batch size of 4) in a closed loop; SIGKILL the worker;
    at most one batch of requests fails, a new READY worker (another pid) within 15 s, and no
    errors once it is back."""
    server = TorchServe(store, tmp_path / "torchserve", models=[f"{MODEL}-1.0.mar"])
    try:
        server.start()
        client = Client(server, photo)
        with ClosedLoop(client, threads=6, max_seconds=90) as load:
            time.sleep(5)  # steady state
            [victim] = server.worker_pids(MODEL)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            back: Optional[float] = None
            while back is None and time.monotonic() < killed + 30:
                workers = server.describe(MODEL)[0]["workers"]
                if any(w["status"] == "READY" and w["pid"] not in (victim, None) for w in workers):
                    back = time.monotonic()
                time.sleep(0.1)
            time.sleep(10)  # load after recovery
        outcomes = load.outcomes
    finally:
        server.stop()
    assert back is not None, "no new READY worker within 30 s of the SIGKILL"
    failed = [o for o in outcomes if o.status != 200]
    after = [o for o in outcomes if o.sent > back]
    print(f"\nSIGKILL: {len(outcomes)} requests, {len(failed)} failed ({describe_failures(outcomes)}), "
          f"new worker READY {back - killed:.1f} s after the kill, {len(after)} requests after recovery "
          f"({sum(o.status != 200 for o in after)} failed); failures at "
          f"{[round(o.done - killed, 2) for o in failed][:12]} s after the kill")
    assert len(failed) <= BATCH_SIZE, f"{len(failed)} requests failed: {describe_failures(outcomes)}"
    assert back - killed <= 15, f"the worker came back after {back - killed:.1f} s"
    assert len(after) > 0 and all(o.status == 200 for o in after), describe_failures(after)


# -- soak ----------------------------------------------------------------------------------

@pytest.fixture
def heavy_lock():
    """Hold the machine lock, so the benchmarks do not run at the same time (wait up to 15 minutes)."""
    try:
        with heavy_run(timeout_s=900):
            yield
    except TimeoutError as error:
        pytest.fail(str(error))


def test_soak_at_80_percent_of_the_maximum_has_no_errors_and_no_memory_growth(store, photo, tmp_path, heavy_lock):
    """Closed-loop burst for the maximum rate; then paced (open-loop) load at 80% of it for
    TSVISION_SOAK_SECONDS (60 in the suite; 300 for issue 7's 5-minute run): zero errors, worker RSS grows by less than 10%."""
    server = TorchServe(store, tmp_path / "torchserve", models=[f"{MODEL}-1.0.mar"])
    try:
        server.start()
        client = Client(server, photo)
        [worker] = server.worker_pids(MODEL)
        with ClosedLoop(client, threads=2 * BATCH_SIZE, max_seconds=20) as burst:
            time.sleep(5)
            measured_from = time.monotonic()
            time.sleep(15)
        counted = [o for o in burst.outcomes if o.sent >= measured_from and o.done <= measured_from + 15]
        maximum = len(counted) / 15
        assert all(o.status == 200 for o in burst.outcomes), describe_failures(burst.outcomes)
        rate = 0.8 * maximum
        warm = paced(client, rate, 20)  # warm-up at the soak rate, then the baseline
        baseline = rss(worker)
        samples = []
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.wait(30):
                with contextlib.suppress(psutil.Error):  # a dead worker fails the test below, not this thread
                    samples.append(round(rss(worker) / 2**20, 1))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = psutil.Process().cpu_times()
        started = time.monotonic()
        try:
            outcomes = paced(client, rate, SOAK_SECONDS)
        finally:
            sampler_stop.set()
            sampler.join(timeout=5)
        elapsed = time.monotonic() - started
        cpu = psutil.Process().cpu_times()
        assert server.worker_pids(MODEL) == [worker], "the worker was replaced during the soak"
        end = rss(worker)
    finally:
        server.stop()
    latencies = sorted(o.done - o.sent for o in outcomes)
    growth = (end - baseline) / baseline
    print(f"\nsoak: maximum {maximum:.1f} req/s (closed loop, {2 * BATCH_SIZE} threads); paced at {rate:.1f} req/s for "
          f"{SOAK_SECONDS:.0f} s: {len(outcomes)} requests in {elapsed:.0f} s ({len(outcomes) / elapsed:.1f} req/s), "
          f"errors: {describe_failures(outcomes + warm)}; latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1000:.0f} ms; worker RSS {baseline / 2**20:.1f} -> "
          f"{end / 2**20:.1f} MiB ({growth:+.1%}), every 30 s: {samples}; load generator CPU "
          f"{(cpu.user + cpu.system - cpu_before.user - cpu_before.system) / elapsed:.0%} of one core")
    assert all(o.status == 200 for o in outcomes + warm), describe_failures(outcomes + warm)
    assert len(outcomes) / elapsed >= 0.9 * rate, "the load generator could not keep the rate"
    assert growth < 0.10, f"worker RSS grew {growth:.1%}"

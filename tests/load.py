"""Load for the reliability tests (tests/e2e/test_reliability.py, tests/slow/test_soak.py): three
versions of a classifier, clients with keep-alive sessions, a closed loop, paced (open-loop) load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import psutil
import requests

from tests.helpers import ONE_WORKER
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.serve.server import TorchServe

MODEL = "rel_classifier"
TOP_K = {"1.0": 5, "2.0": 3, "3.0": 1}  # the length of an answer tells which version answered
BATCH_SIZE = 4



def version_arguments(exports: Path, version: str) -> List[str]:
    """The archive CLI's arguments for one version of the ONNX classifier (one worker of batch size 4: the
    load tests measure and kill one worker; the versions differ in top_k only), without ``--name`` and
    ``--store``."""
    return ["--model", str(exports / "classification" / "model.onnx"),
            "--settings", str(exports / "classification" / "settings.json"), "--version", version,
            "--batch-size", str(BATCH_SIZE), "--max-batch-delay", "20", *ONE_WORKER,
            "--set", f"top_k={TOP_K[version]}"]


def build_versions(exports: Path, store: Path) -> Path:
    """The three versions in ``store``."""
    for version in TOP_K:
        assert archive_main([*version_arguments(exports, version), "--archive-file", f"{MODEL}-{version}",
                             "--name", MODEL, "--store", str(store)]) == 0
    return store


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
            status = session.post(self.url, data=self.body, headers=self.headers, timeout=30,
                                  verify=self.verify).status_code
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

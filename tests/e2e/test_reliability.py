"""Reliability against real TorchServe instances (issue 7): snapshot restore and a worker killed under
load (the soak: tests/slow/test_soak.py). The restore test starts a TorchServe of its own (free
loopback ports, stopped by pid): it stops and restarts it. The worker is killed on the run's server,
in a model registered for that test alone.

Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.e2e.conftest import registered
from tests.helpers import jpeg
from tests.load import (
    BATCH_SIZE,
    MODEL,
    TOP_K,
    Client,
    ClosedLoop,
    build_versions,
    describe_failures,
    version_arguments,
)
from tsvision.tools.serve.manage import Management
from tsvision.tools.serve.server import DEVELOPMENT_PROFILE, TorchServe

pytestmark = pytest.mark.e2e
pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def store(exports, tmp_path_factory) -> Path:
    """Three versions of the ONNX classifier, batch size 4, differing in top_k only."""
    return build_versions(exports, tmp_path_factory.mktemp("reliability_store"))


@pytest.fixture(scope="module")
def photo(photos) -> bytes:
    return jpeg(photos["chelsea"])  # 451×300, a real photo


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

def test_a_worker_killed_under_steady_load_fails_at_most_one_batch_and_comes_back(served, exports, photo):
    """Six client threads (more than the batch size of 4) in a closed loop; SIGKILL the worker;
    at most one batch of requests fails, a new READY worker (another pid) within 15 s, and no
    errors once it is back. On the run's TorchServe: the classifier's version 1.0 is registered for
    this test alone, and only its worker is killed."""
    server = served
    with registered(served, {MODEL: version_arguments(exports, "1.0")}):
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

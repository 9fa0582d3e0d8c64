"""The one TorchServe of the test run: started once, on free loopback ports, with every archive the
end-to-end tests share (``model_store``, in tests/conftest.py since tests/slow uses it too); a test
module that needs archives of its own archives them into the same model store and registers them on
this server (``registered``), and unregisters them afterwards.

The server runs the development profile (registration through the management API on), so that
``registered`` and the version tests (test_ab.py, test_protocols.py) work on it; the serving
profile's refusal is checked on a server of its own (test_served.py)."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence

import pytest
import requests

from tests.helpers import AB_MODEL, BACKENDS, ONE_WORKER, TASKS
from tests.transports import TRANSPORTS, LocalTransport, Transport, local_sources, served_transport
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.serve.manage import verify_archive
from tsvision.tools.serve.server import DEVELOPMENT_PROFILE, TorchServe

STARTED_WITH = [f"{task}_{backend}" for task in TASKS for backend in BACKENDS] + \
    [f"toy_{task}_{backend}" for task in ("detection", "segmentation") for backend in BACKENDS] + \
    ["classification_batched", "person_counter", "cat_counter"]


@pytest.fixture(scope="session")
def served(model_store, tmp_path_factory) -> Iterator[TorchServe]:
    """THE real TorchServe of the run (development profile), on free loopback ports, with every
    archive above READY (the classifier's versions 1.0 and 2.0; 3.0 in the store); always stopped."""
    archives = [f"{name}.mar" for name in STARTED_WITH] + [f"{AB_MODEL}-1.0.mar", f"{AB_MODEL}-2.0.mar"]
    server = TorchServe(model_store, tmp_path_factory.mktemp("torchserve"), models=archives,
                        overrides=DEVELOPMENT_PROFILE)
    try:
        server.start(timeout=600)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def registered(server: TorchServe, archives: Dict[str, Sequence[str]], timeout: float = 600) -> Iterator[List[str]]:
    """Archive each ``name: archive CLI arguments`` (``--name`` and ``--store`` are added) into the
    server's model store, register them all (one worker each, loading in parallel), wait until every
    one is READY, and unregister them on the way out. Yields the names."""
    headers = server.headers("management")
    names: List[str] = []
    try:
        for name, arguments in archives.items():
            # TorchServe starts an archive's own minWorkers whatever initial_workers says: one, unless asked.
            workers = () if "--workers" in arguments else ONE_WORKER
            assert archive_main([*arguments, *workers, "--name", name, "--store", str(server.model_store)]) == 0
            verify_archive(server.model_store / f"{name}.mar")
            response = requests.post(f"{server.management_url}/models", headers=headers, timeout=60,
                                     params={"url": f"{name}.mar", "initial_workers": 1, "synchronous": "false"})
            assert response.status_code < 300, response.text
            names.append(name)
        server.wait_ready(names, timeout=timeout)
        yield names
    finally:
        for name in names:
            requests.delete(f"{server.management_url}/models/{name}", headers=headers, timeout=120)


@pytest.fixture(scope="session", params=TRANSPORTS)
def transport(request, exports, toy_exports, tmp_path_factory) -> Iterator[Transport]:
    """Each way a request reaches an archive's handler (tests/transports.py): ``local`` in-process on the
    files the session's archives were built from (no TorchServe: the session's server is requested only
    by the served ones), ``rest``, ``grpc`` and ``oip`` against the session's TorchServe."""
    if request.param == "local":
        chosen = LocalTransport(local_sources(exports, toy_exports, tmp_path_factory.mktemp("local_models")))
    else:
        chosen = served_transport(request.param, request.getfixturevalue("served"))
    try:
        yield chosen
    finally:
        chosen.close()

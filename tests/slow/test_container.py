"""The serving image (issue 27): built from this checkout with podman on a Debian base made here,
started on the host's network with the classifier's archive mounted, and checked against the same
archive outside the container (its handler in-process, ``LocalWorker``); then stopped.

What stays between runs, in podman's storage: the base image only (a debootstrap of bookworm; make it
again with ``tsvision container base --rebuild``). The image is built without podman's layer cache
(vfs stores every layer as a whole copy, one per instruction) and removed at the end.

Figures (build time, image size, start-up time, stop time) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import shutil
import time
import uuid
from typing import Iterator, Optional

import pytest
import requests

from tests.helpers import jpeg
from tsvision.tools.archive.unpacked import unpack
from tsvision.tools.serve.container import (
    IMAGE,
    Container,
    build_command,
    build_image,
    image_size,
    make_base,
    remove_image,
)
from tsvision.tools.serve.processes import wait_for
from tsvision.tools.serve.server import free_port

ARCHIVE = "classification_onnx"
GRACE = 30  # seconds: Kubernetes' default terminationGracePeriodSeconds


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[str]:
    """Built from the checkout, removed afterwards: without the build cache (vfs) keeping it saves nothing."""
    started = time.monotonic()
    made = make_base()
    print(f"\nbase image: {'made' if made else 'reused'} in {time.monotonic() - started:.0f} s")
    log = tmp_path_factory.mktemp("container") / "build.log"
    try:
        seconds = build_image(build_command(IMAGE), log, replaces=IMAGE)
        print(f"image {IMAGE}: built in {seconds:.0f} s, {image_size(IMAGE) / 1e9:.2f} GB")
        yield IMAGE
    finally:
        remove_image(IMAGE)


def test_the_image_answers_as_the_archive_does_outside_refuses_no_token_and_stops_cleanly(
        image, model_store, photos, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for suffix in (".mar", ".mar.sha256"):
        shutil.copy(model_store / f"{ARCHIVE}{suffix}", store)
    store.chmod(0o755)
    ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc_inference",
                                            "grpc_management")}
    # On the host's network: the test binds inference to the loopback too (the image's default is every
    # interface, with tokens), so nothing here listens beyond 127.0.0.1; the shipped default is checked below.
    container = Container(f"tsvision-test-{uuid.uuid4().hex[:8]}", image, ports, store,
                          env={"TSVISION_BIND_ADDRESS": "127.0.0.1"})
    body = jpeg(photos["chelsea"])
    inference = f"http://127.0.0.1:{ports['inference']}"
    management = f"http://127.0.0.1:{ports['management']}"
    try:
        container.start()
        print(f"container start to healthy: {container.wait_healthy(timeout=600):.1f} s")
        token = {"Authorization": f"Bearer {container.key('inference')}"}
        admin = {"Authorization": f"Bearer {container.key('management')}"}

        def workers() -> Optional[str]:  # /ping says healthy before the worker has loaded its model
            [described] = requests.get(f"{management}/models/{ARCHIVE}", headers=admin, timeout=30).json()
            statuses = [worker["status"] for worker in described["workers"]]
            return None if statuses == ["READY"] else f"workers {statuses}"
        wait_for(workers, timeout=300, what=ARCHIVE)
        print(f"container start to READY: {time.monotonic() - container.started_at:.1f} s")

        inside = requests.post(f"{inference}/predictions/{ARCHIVE}", data=body, headers=token, timeout=60)
        assert inside.status_code == 200, inside.text
        outside = unpack(model_store / f"{ARCHIVE}.mar", tmp_path / "unpacked").open_worker().predict([{"body": body}])
        expected = outside[0].json()
        answer = inside.json()
        assert [row["label"] for row in answer] == [row["label"] for row in expected]
        assert [row["score"] for row in answer] == pytest.approx([row["score"] for row in expected], abs=1e-5)

        no_token = requests.post(f"{inference}/predictions/{ARCHIVE}", data=body, timeout=60)
        assert no_token.status_code in (400, 401, 403), no_token.text  # TorchServe 0.12: 400 InvalidKeyException
        assert "InvalidKeyException" in no_token.text or "Token" in no_token.text, no_token.text

        # Management: the container's loopback only (the host's, on the host network), model API off.
        registration = requests.post(f"{management}/models", params={"url": f"{ARCHIVE}.mar"}, headers=admin,
                                     timeout=30)
        assert registration.status_code == 405, registration.text
        # The configuration TorchServe runs with: management and metrics on the container's loopback
        # whatever TSVISION_BIND_ADDRESS says, the model API off, workflows from an empty store.
        config = container.config()
        assert config["management_address"] == f"http://127.0.0.1:{ports['management']}"
        assert config["metrics_address"] == f"http://127.0.0.1:{ports['metrics']}"
        assert config["grpc_management_address"] == "127.0.0.1"
        assert config["inference_address"] == f"http://127.0.0.1:{ports['inference']}"
        assert config["enable_model_api"] == "false" and config["disable_token_authorization"] == "false"
        assert config["workflow_store"].endswith("no-workflows")

        stopped_in = container.stop(grace=GRACE)
        state = container.state()
        print(f"podman stop: {stopped_in:.1f} s, exit code {state['ExitCode']}")
        assert not state["Running"]
        logs = container.logs()
        assert "entrypoint: stopping TorchServe" in logs and "entrypoint: TorchServe exited" in logs, logs[-2000:]
        assert state["ExitCode"] != 137, "SIGKILLed at the end of the grace period"
    finally:
        container.remove()

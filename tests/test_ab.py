"""Versions and A/B routing against a real TorchServe and a real nginx (Debian's package)."""

from __future__ import annotations

import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from tsvision.tools.manage import Management
from tsvision.tools.manage import main as manage_main
from tsvision.tools.proxy import Nginx
from tsvision.tools.report import served_by_version, variant_report
from tsvision.tools.routing import Routing
from tsvision.tools.server import free_port

pytestmark = pytest.mark.e2e
from tests.conftest import AB_MODEL as MODEL
from tests.conftest import AB_TOP_K as TOP_K


@pytest.fixture(scope="module")
def manage_args(ab_server):
    return ["--management", ab_server.management_url, "--key-file", str(ab_server.workdir / "key_file.json")]


@pytest.fixture(scope="module")
def management(ab_server):
    return Management(ab_server.management_url, ab_server.workdir / "key_file.json")


@pytest.fixture
def nginx(ab_server, tmp_path):
    proxy = Nginx(tmp_path / "nginx", free_port(), ab_server.inference_url)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def tiny_jpeg():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 140, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def routing(weights: dict, shadow=None) -> Routing:
    return Routing.from_mapping({"model": MODEL, "sticky_header": "X-User-Id", "shadow": shadow,
                                 "variants": [{"version": v, "weight": w} for v, w in weights.items()]})


def ask(session, proxy, server, image, user=None):
    headers = {"Content-Type": "image/jpeg", **server.headers()}
    if user is not None:
        headers["X-User-Id"] = user
    response = session.post(f"{proxy.url}/predictions/{MODEL}", data=image, headers=headers, timeout=60)
    return response.status_code, response.headers.get("X-Model-Version"), response.json()


def versions_for(keys, proxy, server, image, workers=8):
    local = threading.local()

    def one(key):
        local.session = getattr(local, "session", None) or requests.Session()
        status, version, answer = ask(local.session, proxy, server, image, key)
        assert status == 200, answer
        assert len(answer) == TOP_K[version], "the answer did not come from the version nginx named"
        return version

    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(keys, pool.map(one, keys)))


def test_versions_are_managed_and_the_default_is_set_explicitly(ab_server, manage_args, management, capsys):
    assert manage_main(manage_args + ["set-default", MODEL, "1.0"]) == 0
    assert "default version is now 1.0 (verified)" in capsys.readouterr().out
    assert manage_main(manage_args + ["register", f"{MODEL}-3.0.mar", "--store", str(ab_server.model_store)]) == 0
    assert manage_main(manage_args + ["scale", MODEL, "2.0", "2"]) == 0
    versions = {v["version"]: v for v in management.summary()[MODEL]}
    assert set(versions) == {"1.0", "2.0", "3.0"} and versions["1.0"]["default"]
    assert versions["2.0"]["ready"] == 2 and versions["3.0"]["ready"] == 1
    assert manage_main(manage_args + ["scale", MODEL, "2.0", "1"]) == 0
    assert manage_main(manage_args + ["list"]) == 0
    listing = capsys.readouterr().out
    assert f"{MODEL}" in listing and "1.0" in listing and "default" in listing
    assert manage_main(manage_args + ["retire", MODEL, "1.0"]) == 1  # the default cannot be retired
    assert "promote another version first" in capsys.readouterr().err


def test_sticky_90_10_split_over_2000_keys(ab_server, nginx, tiny_jpeg):
    nginx.start(routing({"1.0": 90, "2.0": 10}))
    keys = [f"user-{i}" for i in range(2000)]
    first = versions_for(keys, nginx, ab_server, tiny_jpeg)
    share = sum(v == "2.0" for v in first.values()) / len(keys)
    assert abs(share - 0.10) <= 0.02, f"2.0 got {share:.1%} of keys"
    again = versions_for(keys, nginx, ab_server, tiny_jpeg)
    assert again == first, "a key changed version"
    report = variant_report(nginx.access_log)
    assert report["2.0"]["requests"] == 2 * sum(v == "2.0" for v in first.values())
    assert report["1.0"]["requests"] + report["2.0"]["requests"] == 4000
    assert report["1.0"]["error_rate"] == 0 == report["2.0"]["error_rate"]
    assert report["1.0"]["p95_ms"] >= report["1.0"]["p50_ms"] > 0 and report["1.0"]["top_labels"]


def test_no_token_gets_401_at_the_router_and_torchserve_refuses_bad_tokens(ab_server, nginx, tiny_jpeg):
    nginx.start(routing({"1.0": 100}))
    url, image = f"{nginx.url}/predictions/{MODEL}", {"Content-Type": "image/jpeg"}
    for credentials in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer "}):
        response = requests.post(url, data=tiny_jpeg, headers={**image, **credentials}, timeout=30)
        assert response.status_code == 401 and response.json()["type"] == "Unauthorized", credentials
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.post(url, data=tiny_jpeg, headers={**image, "Authorization": "Bearer not-the-key"}, timeout=30)
    assert wrong.status_code == 400 and wrong.json()["type"] == "InvalidKeyException"  # TorchServe's own check
    assert requests.post(url, data=tiny_jpeg, headers={**image, **ab_server.headers()}, timeout=30).status_code == 200
    # TorchServe itself (loopback only) refuses a missing token on both APIs, with 400.
    direct = [requests.post(f"{ab_server.inference_url}/predictions/{MODEL}", data=tiny_jpeg, headers=image, timeout=30),
              requests.get(f"{ab_server.management_url}/models", timeout=30)]
    assert [(r.status_code, r.json()["type"]) for r in direct] == [(400, "InvalidKeyException")] * 2


def test_reload_from_90_10_to_50_50_under_load_fails_nothing(ab_server, nginx, tiny_jpeg):
    nginx.start(routing({"1.0": 90, "2.0": 10}))
    outcomes, stop = [], threading.Event()

    def load():
        session, rng = requests.Session(), random.Random()
        deadline = time.time() + 30  # bounded, whatever happens
        while not stop.is_set() and time.time() < deadline:
            try:
                outcomes.append(ask(session, nginx, ab_server, tiny_jpeg, f"load-{rng.randrange(10**9)}")[0])
            except requests.RequestException as error:
                outcomes.append(repr(error))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    nginx.reload(routing({"1.0": 50, "2.0": 50}))
    time.sleep(2.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert len(outcomes) > 100 and all(o == 200 for o in outcomes), [o for o in outcomes if o != 200][:5]
    after = versions_for([f"after-{i}" for i in range(2000)], nginx, ab_server, tiny_jpeg)
    share = sum(v == "2.0" for v in after.values()) / len(after)
    assert abs(share - 0.50) <= 0.02, f"2.0 got {share:.1%} after the reload"


def test_shadow_gets_a_copy_of_every_request_and_clients_only_see_the_primary(ab_server, nginx, tiny_jpeg):
    nginx.start(routing({"1.0": 100}, shadow="3.0"))
    metrics = f"{ab_server.metrics_url}/metrics"
    before = served_by_version(requests.get(metrics, timeout=10).text, MODEL).get("3.0", 0)
    answers = versions_for([f"shadowed-{i}" for i in range(300)], nginx, ab_server, tiny_jpeg)
    assert set(answers.values()) == {"1.0"}  # and versions_for checked every answer has 1.0's top-k
    deadline, copies = time.time() + 20, 0.0
    while time.time() < deadline:
        copies = served_by_version(requests.get(metrics, timeout=10).text, MODEL).get("3.0", 0) - before
        if copies >= 300:
            break
        time.sleep(0.5)
    assert copies >= 0.99 * 300, f"the shadow received {copies:.0f} of 300 copies"


def test_promote_and_roll_back_move_unversioned_requests(ab_server, manage_args, tiny_jpeg):
    def unversioned_top_k():
        return len(ab_server.predict(MODEL, tiny_jpeg, content_type="image/jpeg").json())

    assert manage_main(manage_args + ["set-default", MODEL, "1.0"]) == 0 and unversioned_top_k() == 5
    assert manage_main(manage_args + ["promote", MODEL, "2.0"]) == 0 and unversioned_top_k() == 3
    assert manage_main(manage_args + ["rollback", MODEL]) == 0 and unversioned_top_k() == 5

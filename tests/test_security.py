"""Safe by default: registration off when serving, no remote URLs, archive integrity."""

from __future__ import annotations

import shutil

import pytest
import requests

from handlers.manage import Management, ManagementError
from handlers.manage import main as manage_main
from tests.conftest import AB_MODEL

pytestmark = pytest.mark.e2e


def test_the_serving_profile_refuses_registration(served, model_store):
    management = Management(served.management_url, served.workdir / "key_file.json")
    with pytest.raises(ManagementError, match="model API is off"):
        management.register("toy_detection_onnx.mar", store=model_store)


def test_remote_url_registration_is_refused(ab_server):
    """Even in the development profile, allowed_urls admits only local .mar files (ShellTorch)."""
    response = requests.post(f"{ab_server.management_url}/models", params={"url": "http://127.0.0.1:9/evil.mar"},
                             headers=ab_server.headers("management"), timeout=30)
    assert response.status_code in (400, 403, 404) and "allowed" in response.text.lower()
    with pytest.raises(ManagementError, match="not a path or URL"):
        Management(ab_server.management_url, ab_server.workdir / "key_file.json").register("http://127.0.0.1:9/evil.mar")


def test_an_archive_whose_hash_does_not_match_is_refused(ab_server, capsys):
    store = ab_server.model_store
    args = ["--management", ab_server.management_url, "--key-file", str(ab_server.workdir / "key_file.json")]
    shutil.copy(store / f"{AB_MODEL}-3.0.mar", store / "tampered.mar")
    (store / "tampered.mar.sha256").write_text((store / f"{AB_MODEL}-3.0.mar.sha256").read_text())
    with open(store / "tampered.mar", "ab") as archive:
        archive.write(b"\x00")  # one byte appended after the hash was recorded
    assert manage_main(args + ["register", "tampered.mar", "--store", str(store)]) == 1
    assert "does not match its recorded SHA-256" in capsys.readouterr().err
    (store / "tampered.mar.sha256").unlink()
    assert manage_main(args + ["register", "tampered.mar", "--store", str(store)]) == 1
    assert "no recorded hash" in capsys.readouterr().err
    assert AB_MODEL in Management(args[1], ab_server.workdir / "key_file.json").models()  # nothing else changed

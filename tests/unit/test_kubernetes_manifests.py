"""The KServe ``InferenceService`` of docs/kubernetes.md, validated offline against the OpenAPI models that
ship with the ``kserve`` package and its ``kubernetes`` client (``tests/openapi_check.py``, run by a Python
that has ``kserve``: ``.venv-kserve``). A planted mistake of each kind is caught, so the check can fail."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.helpers import REPO
from tsvision.tools.serve.kserve_server import kserve_python

DOC = REPO / "docs" / "kubernetes.md"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"


def inference_services(doc=DOC) -> list:
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
    return [block for block in blocks if "kind: InferenceService" in block]


def check(tmp_path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    return subprocess.run([kserve_python(), "-m", "tests.openapi_check", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_the_documented_inference_service_fits_kserves_schema(tmp_path):
    [manifest] = inference_services()
    document = yaml.safe_load(manifest)
    container = document["spec"]["predictor"]["containers"][0]
    assert container["command"][-2:] == ["tsvision", "kserve"] and "--model-store" in container["args"]
    result = check(tmp_path, manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 document(s) fit the schema" in result.stdout


def test_the_serving_images_inference_service_fits_kserves_schema(tmp_path):
    """docs/deployment.md: the image of Containerfile as KServe's predictor, its store at /mnt/models."""
    [manifest] = inference_services(DEPLOYMENT_DOC)
    container = yaml.safe_load(manifest)["spec"]["predictor"]["containers"][0]
    assert container["image"].split("/")[-1].startswith("tsvision-torchserve:")
    assert {"name": "TSVISION_MODEL_STORE", "value": "/mnt/models"} in container["env"]
    # /ping needs the token under TorchServe 0.12's token authorization: the image's own health check
    assert container["readinessProbe"]["exec"]["command"] == ["python3", "/opt/tsvision/container/healthcheck.py"]
    result = check(tmp_path, manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 document(s) fit the schema" in result.stdout


@pytest.mark.parametrize("mistake, said", [
    (("containerPort: 8080", "containerPrt: 8080"), "containerPrt: Extra inputs are not permitted"),
    (("minReplicas: 1", "minReplicas: one"), "minReplicas: expected int"),
    (("predictor:", "predictr:"), "predictr: no such field in V1beta1InferenceServiceSpec"),
    (("      - name: kserve-container\n        image:", "      - image:"), "name: Field required"),
])
def test_each_kind_of_mistake_is_named(tmp_path, mistake, said):
    [manifest] = inference_services()
    assert mistake[0] in manifest
    result = check(tmp_path, manifest.replace(mistake[0], mistake[1], 1))
    assert result.returncode == 1 and said in result.stdout, result.stdout + result.stderr

"""Safe by default: no remote URLs, archive integrity, TLS (registration off when serving: test_served.py)."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import pytest
import requests

from tests.helpers import AB_MODEL, jpeg
from tsvision.tools.clients import predict
from tsvision.tools.clients.grpc_client import GrpcClient
from tsvision.tools.serve.manage import Management, ManagementError
from tsvision.tools.serve.manage import main as manage_main
from tsvision.tools.serve.server import TorchServe, free_port

pytestmark = pytest.mark.e2e


def test_remote_url_registration_is_refused(served):
    """Even in the development profile, allowed_urls admits only local .mar files (ShellTorch)."""
    response = requests.post(f"{served.management_url}/models", params={"url": "http://127.0.0.1:9/evil.mar"},
                             headers=served.headers("management"), timeout=30)
    assert response.status_code in (400, 403, 404) and "allowed" in response.text.lower()
    with pytest.raises(ManagementError, match="not a path or URL"):
        Management(served.management_url, served.workdir / "key_file.json").register("http://127.0.0.1:9/evil.mar")


def test_an_archive_whose_hash_does_not_match_is_refused(served, capsys):
    store = served.model_store
    args = ["--management", served.management_url, "--key-file", str(served.workdir / "key_file.json")]
    shutil.copy(store / f"{AB_MODEL}-3.0.mar", store / "tampered.mar")
    (store / "tampered.mar.sha256").write_text((store / f"{AB_MODEL}-3.0.mar.sha256").read_text())
    with open(store / "tampered.mar", "ab") as archive:
        archive.write(b"\x00")  # one byte appended after the hash was recorded
    assert manage_main(args + ["register", "tampered.mar", "--store", str(store)]) == 1
    assert "does not match its recorded SHA-256" in capsys.readouterr().err
    (store / "tampered.mar.sha256").unlink()
    assert manage_main(args + ["register", "tampered.mar", "--store", str(store)]) == 1
    assert "no recorded hash" in capsys.readouterr().err
    assert AB_MODEL in Management(args[1], served.workdir / "key_file.json").models()  # nothing else changed


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 made by openssl: the subjectAltName IP entry is what
    clients check (without it: "IP address mismatch"); the key is PKCS#8, as gRPC's Netty needs."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def test_https_and_grpc_over_tls_with_a_self_signed_certificate(model_store, certificate, photos, tmp_path, monkeypatch, capsys):
    """REST (inference, management, metrics) over https and gRPC over TLS with the test's own
    certificate; plain HTTP to the same ports gets 403, plaintext gRPC fails; a client that does
    not trust the certificate refuses the server."""
    key, cert = certificate
    # This machine sets REQUESTS_CA_BUNDLE, which silently replaces a Session's ``verify``
    # (psf/requests#3829); set it here too so the test always covers that trap.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    overrides = {f"{api}_address": f"https://127.0.0.1:{free_port()}" for api in ("inference", "management", "metrics")}
    overrides.update(private_key_file=str(key), certificate_file=str(cert), enable_grpc_ssl="true")
    server = TorchServe(model_store, tmp_path / "torchserve", models=["classification_onnx.mar"], overrides=overrides)
    image = jpeg(photos["chelsea"])
    photo_file = tmp_path / "chelsea.jpg"
    photo_file.write_bytes(image)
    try:
        server.start(timeout=180)  # readiness is polled over https, trusting only our certificate
        response = server.predict("classification_onnx", image, content_type="image/jpeg")
        assert response.status_code == 200, response.text
        assert Management(server.management_url, server.workdir / "key_file.json", verify=str(cert)).models() == ["classification_onnx"]
        assert "ts_inference_requests_total" in requests.get(f"{server.metrics_url}/metrics", verify=str(cert), timeout=10).text
        capsys.readouterr()
        for protocol in ("rest", "oip-rest"):  # the predict CLI trusts the certificate it is given
            assert predict.main(["--model", "classification_onnx", "--image", str(photo_file), "--protocol", protocol,
                                 "--url", server.inference_url, "--key-file", str(server.workdir / "key_file.json"),
                                 "--tls-cert", str(cert)]) == 0
            assert json.loads(capsys.readouterr().out) == response.json(), protocol

        # Plain HTTP to a TLS port: TorchServe answers 403 and serves nothing.
        plain = requests.post(server.inference_url.replace("https://", "http://") + "/predictions/classification_onnx",
                              data=image, headers={"Content-Type": "image/jpeg", **server.headers()}, timeout=10)
        assert plain.status_code == 403 and "only accepts HTTPS" in plain.text, plain.text
        for url in (server.management_url + "/models", server.metrics_url + "/metrics"):
            plain = requests.get(url.replace("https://", "http://"), headers=server.headers("management"), timeout=10)
            assert plain.status_code == 403 and "only accepts HTTPS" in plain.text, plain.text
            with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
                requests.get(url, timeout=10)  # a client that trusts only the usual CAs

        ports = [f"127.0.0.1:{server.properties[f'grpc_{api}_port']}" for api in ("inference", "management")]
        secure = GrpcClient(*ports, key_file=server.workdir / "key_file.json", root_certificate=cert, timeout=60)
        plaintext = GrpcClient(*ports, key_file=server.workdir / "key_file.json", timeout=10)
        try:
            assert secure.predict("classification_onnx", image) == response.json()
            with pytest.raises(grpc.RpcError) as refused:
                plaintext.predict("classification_onnx", image)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            secure.close()
            plaintext.close()
    finally:
        server.stop()

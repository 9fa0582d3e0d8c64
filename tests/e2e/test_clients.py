"""The command-line tools and the example clients against the run's TorchServe (token authorization
on): one-line errors that name the missing key file, a quiet end into a closed pipe, and every
example client, script and ``--draw``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml
from PIL import Image

from examples import classify, client, detect, segment
from tests.checks import check_classification, check_detection, check_segmentation
from tests.helpers import REPO as ROOT
from tests.unit.test_cli_errors import assert_one_line, run
from tsvision.tools.serve.server import TorchServe


def test_predict_without_a_key_file_and_into_a_closed_pipe(served, photos, tmp_path):
    """Against a real TorchServe with token authorization: no key file is said, and | head ends quietly."""
    photos["chelsea"].save(tmp_path / "chelsea.png")
    url = ["--url", served.inference_url, "--model", "classification_onnx", "--image", tmp_path / "chelsea.png"]
    no_key_file = run(["predict", *url], tmp_path)  # no ./key_file.json
    print(assert_one_line(no_key_file, 1, "HTTP 400", "no key file", "--key-file"))
    grpc = ["--protocol", "grpc", "--grpc", f"127.0.0.1:{served.properties['grpc_inference_port']}"]
    print(assert_one_line(run(["predict", *url, *grpc], tmp_path), 1, "no key file", "--key-file"))
    manage = ["manage", "--management", served.management_url, "list"]
    print(assert_one_line(run(manage, tmp_path), 1, served.management_url, "no key file", "--key-file"))
    key = ["--key-file", served.workdir / "key_file.json"]
    answered = run(["predict", *url, *key], tmp_path)
    assert answered.returncode == 0 and json.loads(answered.stdout)[0]["label"], answered.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tsvision", "predict", *map(str, url + key)], cwd=tmp_path,
                               env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1 and stderr == "", stderr


def run_clients_against(server: TorchServe) -> None:
    """Every example client against a started TorchServe serving the six default archives."""
    photo = client.sample_photo("chelsea")
    width, height = Image.open(io.BytesIO(photo)).size
    token = server.key("inference")
    for task in client.TASKS:
        for backend in ("torchscript", "onnx"):
            model = f"{task}_{backend}"
            with zipfile.ZipFile(server.model_store / f"{model}.mar") as archive:
                labels = json.loads(archive.read("labels.json"))
                settings = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
            status, answer = client.predict(server.inference_url, model, photo, token)
            assert status == 200, (model, answer)
            if task == "classification":
                check_classification(answer, labels, settings["top_k"])
            elif task == "segmentation":
                check_segmentation(answer, width, height, len(labels))
            else:
                check_detection(answer, width, height, settings["score_threshold"], settings["max_detections"])

    status, answer = client.predict(server.inference_url, "classification_onnx", photo, None)  # no token
    assert 400 <= status < 500 and {"code", "type", "message"} <= set(answer)

    common = ["--url", server.inference_url, "--key-file", str(server.workdir / "key_file.json")]
    with tempfile.TemporaryDirectory() as folder:
        for script, lines in ((classify, 5), (segment, 2), (detect, 1)):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                assert script.main(common) == 0
            assert len(out.getvalue().splitlines()) >= lines, out.getvalue()
        picture = Path(folder) / "segmentation.png"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert client.main(["--model", "segmentation_onnx", *common, "--draw", str(picture)]) == 0
        answer = json.loads(out.getvalue())
        drawn = Image.open(picture)  # the server's picture (Accept: image/png)
        assert drawn.format == "PNG" and drawn.size[1] == answer["height"] == 512
        assert drawn.size[0] > 512  # the legend beside


def test_example_clients_against_torchserve(served):
    run_clients_against(served)

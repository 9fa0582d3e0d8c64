"""The README's commands run as written (issue 24, part 2).

The ```bash blocks of the README's "Starting TorchServe" section start a real TorchServe with the
shipped ``config.properties`` from a folder laid out as the repository root (``.venv``,
``config.properties``, ``model_store/``), and the blocks of the request sections run against it
in one bash, as written. Only the ports change (free loopback ports instead of 8080-8082,
7070-7071 and worker port 9000), and ``TMPDIR`` points into the folder. A section opts in by
naming its heading in ``START_SECTIONS`` or ``REQUEST_SECTIONS``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List

import psutil
import pytest
from PIL import Image

from examples.demo import keep_running_help
from tests.checks import check_detection
from tests.helpers import REPO
from tsvision.tools.serve.server import REPO_CONFIG, TorchServe, free_port

README = REPO / "README.md"
START_SECTIONS = ("Starting TorchServe",)
REQUEST_SECTIONS = ("Sending requests", "Per-request options", "Pictures")
SHIPPED_PORTS = ("8080", "8081", "8082", "7070", "7071", "9000")  # the listeners and initial_worker_port
MODEL = "detection_onnx"  # the model the request sections call
CURL_MODELS = ("classification_onnx", "segmentation_onnx")  # and examples/curl.sh's others
MARK = "@@@ next README block @@@"


def bash_blocks(text: str, headings: Iterable[str]) -> List[str]:
    """The ```bash blocks directly under these headings (any level), in README order."""
    wanted, blocks, heading, block = set(headings), [], None, None
    fence = False  # inside a fenced block that is not taken
    for line in text.splitlines():
        if block is not None:
            if line.startswith("```"):
                blocks.append("\n".join(block))
                block = None
            else:
                block.append(line)
        elif line.startswith("```"):
            if not fence and line.strip() == "```bash" and heading in wanted:
                block = []
            else:
                fence = not fence
        elif not fence and line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


def with_ports(text: str, ports: Dict[str, int]) -> str:
    """The text with each shipped port replaced by its free stand-in."""
    return re.sub(r"\b(%s)\b" % "|".join(ports), lambda match: str(ports[match.group(1)]), text)


def json_documents(text: str) -> list:
    """The JSON documents printed one after another (curl -s prints no newline between them)."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def run_bash(script: str, cwd: Path, env: Dict[str, str]) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"bash exited {done.returncode}\n{script}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
    return done.stdout


def test_the_readme_sections_hold_the_commands_the_e2e_test_runs():
    text = README.read_text()
    start = bash_blocks(text, START_SECTIONS)
    assert start == [".venv/bin/torchserve --start --ncs --ts-config config.properties"]
    for heading in REQUEST_SECTIONS:
        blocks = bash_blocks(text, [heading])
        assert blocks and all("curl " in block for block in blocks), heading
    # Fenced non-bash blocks and '#' lines inside blocks are neither blocks nor headings.
    sample = "## A\n```json\n# B\n```\n```bash\n# comment\necho a\n```\n## B\n```bash\necho b\n```\n"
    assert bash_blocks(sample, ["A"]) == ["# comment\necho a"] and bash_blocks(sample, ["B"]) == ["echo b"]
    assert bash_blocks(sample, ["A", "B"]) == ["# comment\necho a", "echo b"]
    assert with_ports("http://127.0.0.1:8080 x=7070 18080", {"8080": 1, "7070": 2}) == "http://127.0.0.1:1 x=2 18080"


@pytest.mark.e2e
def test_readme_commands_run_as_written_against_torchserve_started_as_the_readme_says(model_store, tmp_path):
    text = README.read_text()
    ports = {port: free_port() for port in SHIPPED_PORTS}
    root = tmp_path / "repo"  # laid out as the repository root after ./archive.sh (three archives of the ten)
    (root / "model_store").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / ".venv").symlink_to(sys.prefix)
    (root / "examples").symlink_to(README.parent / "examples")
    for name in (MODEL, *CURL_MODELS):
        shutil.copy(model_store / f"{name}.mar", root / "model_store")
    (root / "config.properties").write_text(with_ports(REPO_CONFIG.read_text(), ports))
    env = {key: value for key, value in os.environ.items() if key != "TS_CONFIG_FILE"}
    env["TMPDIR"] = str(root / "tmp")

    with open(root / "console.log", "w") as console:  # the frontend inherits it: no pipe to wait on
        subprocess.run(["bash", "-euo", "pipefail", "-c", with_ports("\n".join(bash_blocks(text, START_SECTIONS)), ports)],
                       cwd=root, env=env, stdout=console, stderr=subprocess.STDOUT, check=True, timeout=120)
    server = TorchServe(root / "model_store", root, base_config=root / "config.properties", free_ports=False)
    server.pid = int((root / "tmp" / ".model_server.pid").read_text())
    try:
        server.wait_ready([MODEL, *CURL_MODELS], timeout=300)
        assert (root / "key_file.json").exists() and (root / "logs").is_dir()  # in the directory it was started from

        blocks = [with_ports(block, ports) for block in bash_blocks(text, REQUEST_SECTIONS)]
        out = run_bash("\n".join(f"echo '{MARK}'\n{block}" for block in blocks), root, env).split(MARK)[1:]
        assert len(out) == len(blocks) == 3, out

        with zipfile.ZipFile(root / "model_store" / f"{MODEL}.mar") as archive:
            labels = json.loads(archive.read("labels.json"))
        width, height = Image.open(root / "photo.jpg").size

        def check(answer: list, threshold: float = 0.0) -> list:
            check_detection(answer, width, height, threshold)
            assert all(d["label"] == labels[d["index"]] for d in answer)
            return answer

        # Sending requests: raw JPEG bytes and the same image as base64 JSON.
        raw, as_json = json_documents(out[0])
        assert check(raw) and as_json == raw
        # Per-request options: form fields, then query parameters on /invocations.
        best, people_and_dogs = json_documents(out[1])
        assert check(best, 0.05 - 1e-9) == [d for d in raw if d["score"] >= 0.05][:3] and best
        check(people_and_dogs)
        expected = [d for d in raw if d["label"] in ("person", "dog")]
        assert expected and {d["label"] for d in people_and_dogs} <= {"person", "dog"}
        assert all(d in people_and_dogs for d in expected)
        # Pictures: a real PNG at the photo's size, not an error body.
        assert out[2].strip() == ""
        picture = Image.open(root / "boxes.png")
        assert picture.format == "PNG" and picture.size == (width, height)
        assert picture.convert("RGB").tobytes() != Image.open(root / "photo.jpg").convert("RGB").tobytes()

        # examples/curl.sh from the directory TorchServe was started from (URL: the port only).
        curl_sh = run_bash(f"URL={server.inference_url} bash examples/curl.sh", root, env).split("\n== ")[1:]
        assert [section.split(":")[0] for section in curl_sh] == ["classification_onnx"] * 2 + [MODEL, "segmentation_onnx"]
        top5, top5_from_json = (json.loads(section.splitlines()[1]) for section in curl_sh[:2])
        assert len(top5) == 5 and top5 == top5_from_json and all({"label", "index", "score"} == set(x) for x in top5)
        assert curl_sh[2].splitlines()[1].startswith('[{"label": ')  # cut to 600 characters
        segmentation = json.loads(curl_sh[3].splitlines()[1])
        assert (segmentation["width"], segmentation["height"]) == (width, height) and segmentation["mask"].endswith("...")

        # The demo's --keep-running lines for this server: the key, a request, and the stop.
        lines = [line.strip() for line in keep_running_help(server).splitlines() if line.startswith("  ")]
        assert len(lines) == 3
        assert json_documents(run_bash("\n".join(lines[:2]), root, env)) == [raw]
        tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        run_bash(lines[2], tmp_path, env)  # torchserve --stop from the server's directory with its TMPDIR
        assert not (root / "key_file.json").exists()  # --stop deletes it, as the README says
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, alive  # the frontend stopped its workers
    finally:
        server.stop()

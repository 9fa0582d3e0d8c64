"""Every tsvision command answers a mistake with one line on stderr and the right exit status
(2: the command line or a file it names is wrong, 1: the work failed), a traceback only with
--debug, a complete --help, and a quiet end when its reader closes the pipe (issue 24, part 4).

The commands run as subprocesses on tiny files: no export, no TorchServe (a closed port stands
for a server that is not running); the ones that need a real answer: tests/e2e/test_clients.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import REPO

ROOT = REPO
HANDLER_CLASSES = ("ImageClassifier", "ImageSegmenter", "ObjectDetector", "InstanceSegmenter", "KeypointDetector")


def run(args, cwd: Path, module: str = "tsvision", stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """``python -m tsvision ARGS`` (or another module) with this tree's code first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=180)


def closed_port() -> int:
    """A loopback port nothing listens on (taken from the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_classifier(path: Path) -> Path:
    """A 3-class ONNX classifier without torch: global average pool of the three channels."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
                               helper.make_node("Flatten", ["pooled"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder of small right and wrong inputs; the commands run in it."""
    folder = tmp_path_factory.mktemp("cli_errors")
    tiny_classifier(folder / "tiny.onnx")
    (folder / "garbage.onnx").write_bytes(b"this is not a protobuf")
    (folder / "model.txt").write_text("a model file with a suffix no runtime reads\n")
    (folder / "broken.json").write_text('{"task": "classification",\n')
    (folder / "typo.json").write_text(json.dumps({"task": "classification", "input_sise": 224}))
    (folder / "labels.json").write_text(json.dumps(["red", "green", "blue"]))
    (folder / "not-a-key.json").write_text("token=abc\n")
    (folder / "photo.png").write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # only sent to closed ports
    (folder / "bad.yaml").write_text("model: [\n")
    (folder / "no-version.yaml").write_text("model: m\nvariants:\n  - {weight: 100}\n")
    (folder / "access.log").write_text("this is not JSON\n")
    (folder / "a-file").write_text("")
    return folder


def assert_one_line(result: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """Exit ``status``, exactly one line on stderr, no traceback, the command named, ``words`` in it."""
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("tsvision") and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


PORT = closed_port()
MISTAKES = {  # name: (arguments, exit status, words the one line must hold)
    "archive: missing model": (["archive", "--model", "nope.onnx", "--task", "classification", "--name", "m"], 2,
                               ["--model", "nope.onnx", "no such file"]),
    "archive: not a model": (["archive", "--model", "garbage.onnx", "--task", "classification", "--name", "m"], 2,
                             ["garbage.onnx", "not an ONNX model"]),
    "archive: unknown suffix": (["archive", "--model", "model.txt", "--task", "classification", "--name", "m"], 2,
                                ["model.txt", ".onnx", ".pt"]),
    "archive: missing settings": (["archive", "--model", "tiny.onnx", "--settings", "nope.json", "--name", "m"], 2,
                                  ["--settings", "nope.json", "no such file"]),
    "archive: settings not JSON": (["archive", "--model", "tiny.onnx", "--settings", "broken.json", "--name", "m"], 2,
                                   ["broken.json", "not JSON"]),
    "archive: unknown setting": (["archive", "--model", "tiny.onnx", "--settings", "typo.json", "--name", "m"], 2,
                                 ["input_sise", "unknown handler setting", "did you mean 'input_size'?"]),
    "archive: bad name": (["archive", "--model", "garbage.onnx", "--task", "classification", "--name", "my model/1"], 2,
                          ["--name", "'my model/1'", "^[A-Za-z0-9][A-Za-z0-9_\\-.]*$"]),  # before the model check
    "archive: --set without =": (["archive", "--model", "tiny.onnx", "--task", "classification", "--name", "m",
                                  "--set", "input_size"], 2, ["--set", "key=value", "input_size"]),
    "archive: --set wrong type": (["archive", "--model", "tiny.onnx", "--task", "classification", "--name", "m",
                                   "--set", "input_size=big"], 2, ["input_size", "integer", "big"]),
    "archive: unknown task": (["archive", "--model", "tiny.onnx", "--task", "counting", "--name", "m"], 2,
                              ["--task", "counting", "classification"]),
    "archive: store under a file": (["archive", "--model", "tiny.onnx", "--task", "classification", "--name", "m",
                                     "--store", "a-file/store"], 2, ["--store", "a-file", "not a folder"]),
    "archive: labels not a labels file": (["archive", "--model", "tiny.onnx", "--task", "classification", "--name", "m",
                                           "--labels", "not-a-key.json"], 2,
                                          ["--labels", "not-a-key.json", "labels file"]),
    "export: missing checkpoint": (["export", "--task", "classification", "--checkpoint", "nope.pth"], 2,
                                   ["--checkpoint", "nope.pth", "no such file"]),
    "export: --set unknown setting": (["export", "--task", "detection", "--set", "score_treshold=0.3"], 2,
                                      ["--set", "score_treshold", "did you mean 'score_threshold'?"]),
    "export: unknown architecture": (["export", "--task", "classification", "--arch", "nope", "--out", "out"], 2,
                                     ["nope", "Unknown model"]),
    "predict: no server": (["predict", "--model", "m", "--image", "photo.png", "--url", f"http://127.0.0.1:{PORT}"], 1,
                           [f"http://127.0.0.1:{PORT}/predictions/m", "Connection refused"]),
    "predict: no gRPC server": (["predict", "--model", "m", "--image", "photo.png", "--protocol", "grpc",
                                "--grpc", f"127.0.0.1:{PORT}"], 1, [f"127.0.0.1:{PORT}", "UNAVAILABLE"]),
    "predict: not a URL": (["predict", "--model", "m", "--image", "photo.png", "--url", "localhost:8080"], 2,
                           ["not a usable URL", "localhost:8080"]),
    "predict: not an address": (["predict", "--model", "m", "--image", "photo.png", "--grpc", "7070"], 2,
                                ["--grpc", "'7070'", "HOST:PORT"]),
    "predict: missing image": (["predict", "--model", "m", "--image", "nope.jpg"], 2,
                               ["--image", "nope.jpg", "no such file"]),
    "predict: missing key file": (["predict", "--model", "m", "--image", "photo.png", "--key-file", "nope.json"], 2,
                                  ["--key-file", "nope.json", "no such file"]),
    "predict: not a key file": (["predict", "--model", "m", "--image", "photo.png", "--key-file", "not-a-key.json"], 2,
                                ["not-a-key.json", "not TorchServe's key file"]),
    "manage: no server": (["manage", "--management", f"http://127.0.0.1:{PORT}", "list"], 1,
                          [f"http://127.0.0.1:{PORT}/models", "Connection refused"]),
    "manage: unknown command": (["manage", "frob"], 2, ["frob", "register"]),
    "route: bad listen address": (["route", "haproxy", ROOT / "examples" / "routing.yaml", "--listen", "8091"], 2,
                                  ["--listen", "HOST:PORT"]),
    "route: missing routing file": (["route", "nginx", "nope.yaml"], 2, ["nope.yaml", "no such file"]),
    "route: not YAML": (["route", "nginx", "bad.yaml"], 2, ["bad.yaml", "not YAML"]),
    "route: variant without version": (["route", "kubernetes", "no-version.yaml"], 2, ["no-version.yaml", "version"]),
    "route: apply without a router": (["route", "apply", ROOT / "examples" / "routing.yaml", "--prefix", "nowhere"], 2,
                                      ["--prefix", "nowhere", "haproxy.cfg"]),
    "report: missing log": (["report", "--log", "nope.log"], 2, ["--log", "nope.log", "no such file"]),
    "report: not an access log": (["report", "--log", "access.log"], 2,
                                  ["access.log", "not the router's JSON access log"]),
    "gateway: bad address": (["gateway", "--listen", "no-port"], 2, ["--listen", "no-port", "HOST:PORT"]),
    "unknown command": (["frob"], 2, ["frob", "export", "archive"]),
}


@pytest.fixture(scope="module")
def mistakes_run(files) -> dict:
    """Every mistake's command run once, as its own subprocess, as many at a time as there are cores
    (each is a fresh Python that spends its seconds importing; they share nothing but the folder of
    inputs, which none of them writes)."""
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return dict(zip(MISTAKES, pool.map(lambda name: run(MISTAKES[name][0], files), MISTAKES)))


@pytest.mark.parametrize("name", MISTAKES)
def test_a_mistake_is_one_line(mistakes_run, name):
    _, status, words = MISTAKES[name]
    assert_one_line(mistakes_run[name], status, *words)


def test_the_older_entry_points_and_archive_sh_say_it_the_same_way(files):
    """``python -m tsvision.tools.archive`` (what the tsvision-archive console script runs) and ./archive.sh."""
    args = ["--model", "nope.onnx", "--task", "classification", "--name", "m"]
    assert_one_line(run(args, files, module="tsvision.tools.archive"), 2, "nope.onnx", "no such file")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(ROOT / "archive.sh"), "--model", str(files / "garbage.onnx"),
                             "--task", "classification", "--name", "my model"],
                            env=env, capture_output=True, text=True, timeout=180)
    assert_one_line(result, 2, "--name", "'my model'")


def test_debug_prints_the_traceback_too(files):
    quiet = run(["report", "--log", "access.log"], files)
    for args in (["--debug", "report", "--log", "access.log"], ["report", "--log", "access.log", "--debug"]):
        loud = run(args, files)
        assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr, loud.stderr
        assert loud.stderr.splitlines()[-1] == quiet.stderr.strip()  # the same line ends it


def test_a_closed_pipe_ends_quietly(files):
    """``tsvision route kubernetes ... | head -1`` with the reader gone before the first write."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tsvision", "route", "kubernetes",
                                str(ROOT / "examples" / "routing.yaml")],
                               cwd=files, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone: the command's write meets a broken pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1 and stderr == "", stderr
    assert run(["route", "kubernetes", ROOT / "examples" / "routing.yaml"], files).stdout.startswith("apiVersion")


def test_archiving_prints_no_torchserve_backend_lines(files, tmp_path):
    """The in-process check imports TorchServe's base_handler, which warned about OpenVINO and TensorRT."""
    result = run(["archive", "--model", "tiny.onnx", "--task", "classification", "--labels", "labels.json",
                  "--name", "tiny", "--store", tmp_path], files)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "" and (tmp_path / "tiny.mar").is_file(), result.stderr


def test_every_help_is_complete(capsys):
    from tsvision.tools import cli

    assert cli.main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "--debug" in top
    for name, (_module, _) in cli.COMMANDS.items():
        assert name in top
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        assert exit_.value.code == 0 and f"usage: tsvision {name}" in text and "--debug" in text, name
    for args, expected in ((["archive", "--help"],
                            [*HANDLER_CLASSES, "(default: model_store)", "batchSize for the model (default: 4)",
                             "the memory (default: 2)", "(default: 1.0)"]),
                           (["predict", "--help"],
                            ["(default: rest)", "(default: http://127.0.0.1:8080)", "key_file.json"]),
                           (["manage", "register", "--help"], ["(default: model_store)", "(default: 1)"]),
                           (["route", "haproxy", "--help"], ["(default: 127.0.0.1:8091)"])):
        with pytest.raises(SystemExit):
            cli.main(args)
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for word in expected:
            assert word in text, (args, word)

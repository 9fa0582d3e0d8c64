"""Issue 24, part 1: plain ``torch-model-archiver`` and ``torchserve --start`` as first-class paths
(the in-process part: tests/unit/test_plain_archiver.py).

End to end, on a TorchServe of its own (the README's commands start it): the commands of the
README's section "With torch-model-archiver and torchserve directly", read from the README itself (the exports replaced by the session's, with made-up label
names), served by a real TorchServe whose Python cannot import ``tsvision``: a fresh venv that
sees the main venv's packages through a ``.pth`` line (a ``.pth`` file inside a folder added that
way is not processed, so the editable install's finder stays out), PYTHONPATH unset.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List

import psutil
import pytest
import skimage.data
import torch
from PIL import Image

from tests.helpers import TASKS, jpeg
from tests.instance_toys import BrightMaskYoloSeg
from tests.keypoint_toys import TOY_KEYPOINT_NAMES, TOY_SKELETON, BrightRectanglePose
from tests.unit.test_plain_archiver import HANDLERS, command_lines, readme_blocks  # noqa: E402
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.model_files import write_settings
from tsvision.tools.serve.processes import stop_tree
from tsvision.tools.serve.server import TorchServe


# -- end to end: the README's commands on a host without tsvision ------------------------------------
@pytest.fixture(scope="module")
def yolo_toys(tmp_path_factory) -> Path:
    """Stand-ins for the README's YOLOv8n-seg and -pose exports (ultralytics' exports are slow): the
    toys of the same contracts, written by ``write_settings`` (settings, labels, model-config.yaml)."""
    root = tmp_path_factory.mktemp("plain_yolo_toys")
    toys = {
        "instance_segmentation": (BrightMaskYoloSeg(640), {"detection_format": "yolov8_seg", "score_threshold": 0.5},
                                  ["background", "bright rectangle", "circle"], ["output0", "protos"]),
        "keypoints": (BrightRectanglePose(640), {"detection_format": "yolov8_pose", "score_threshold": 0.5,
                                                 "keypoint_names": TOY_KEYPOINT_NAMES, "skeleton": TOY_SKELETON},
                      ["bright rectangle"], ["output0"]),
    }
    for task, (module, settings, labels, outputs) in toys.items():
        write_settings(Exportable(task, f"toy-{task}", module.eval(), {"input_size": 640, **settings}, labels, False, outputs),
                       root / task, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.rand(2, 3, 640, 640),), str(root / task / "model.onnx"), dynamo=False,
                              input_names=["images"], output_names=outputs, dynamic_axes={"images": {0: "batch"}})
    return root


def place_export(line: str, workdir: Path, sources: Dict[str, Path]) -> tuple:
    """Instead of running ``tsvision export --task T ... --out DIR``: the session's export of T in DIR,
    its labels replaced by made-up names (as many). Returns (task, the names)."""
    args = shlex.split(line)
    task, out = args[args.index("--task") + 1], workdir / args[args.index("--out") + 1]
    out.mkdir(parents=True)
    for file in sources[task].iterdir():
        if file.suffix in (".onnx", ".pt"):
            (out / file.name).symlink_to(file)
        else:
            shutil.copy2(file, out / file.name)
    count = len(json.loads((out / "labels.json").read_text()))
    names = [f"made-up {task} {i}" for i in range(count)]
    (out / "labels.json").write_text(json.dumps(names))
    return task, names


def host_without_tsvision(folder: Path) -> Path:
    """A venv that sees the main venv's packages but not its editable tsvision, with a ``torchserve``
    launcher of its own: TorchServe starts its workers with the Python that runs ``torchserve``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    purelib = Path(subprocess.run([str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    launcher = folder / "bin" / "torchserve"
    launcher.write_text(f"#!{folder / 'bin' / 'python'}\nimport sys\nfrom ts.model_server import start\nsys.exit(start())\n")
    launcher.chmod(0o755)
    return folder


@pytest.mark.e2e
def test_readme_plain_commands_serve_on_a_host_without_tsvision(exports, yolo_toys, tmp_path):
    blocks = readme_blocks()
    serve_block = next(block for block in blocks if "torchserve --start" in block)
    workdir = tmp_path / "repo"
    workdir.mkdir()
    (workdir / "handlers").symlink_to(HANDLERS)
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    sources = {**{task: exports / task for task in TASKS}, **{task: yolo_toys / task for task in ("instance_segmentation", "keypoints")}}

    # The build machine: the README's commands, the exports replaced by the session's.
    names: Dict[str, List[str]] = {}
    script = ["set -e"]
    for block in blocks:
        if block is serve_block:
            continue
        for line in command_lines(block):
            if line.startswith("tsvision export"):
                task, names[task] = place_export(line, workdir, sources)
            else:
                script.append(line)
    (workdir / "three.json").write_text(json.dumps(["a", "b", "c"]))  # and one archive whose labels do not fit
    script.append("torch-model-archiver --model-name bad_labels --version 1.0 --handler handlers/image_classifier.py "
                  "--serialized-file build/classification/model.onnx --config-file build/classification/model-config.yaml "
                  "--extra-files \"$(tsvision extra-files --out build/extra-bad --labels three.json)\" --export-path model_store")
    (workdir / "model_store").mkdir()
    started = time.time()
    built = subprocess.run(["bash", "-c", "\n".join(script)], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    print(f"\nbuild commands: {time.time() - started:.1f} s")
    with zipfile.ZipFile(workdir / "model_store" / "classifier.mar") as archive:
        packed = set(archive.namelist())
    assert {"tsvision/__init__.py", "tsvision/serving/handler.py", "labels.json", "model-config.yaml"} <= packed
    assert not any(name.startswith("tsvision/tools") for name in packed)

    # The serving host: a Python that cannot import tsvision, PYTHONPATH unset, its own TMPDIR.
    host = host_without_tsvision(tmp_path / "host")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TS_CONFIG_FILE")}
    env.update(PATH=f"{host / 'bin'}{os.pathsep}{env.get('PATH', '')}", TMPDIR=str(workdir / "tmp"))
    (workdir / "tmp").mkdir()
    probe = subprocess.run([str(host / "bin" / "python"), "-c", "import ts, torch, onnxruntime, yaml; import tsvision"],
                           cwd=workdir, env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tsvision'" in probe.stderr
    server = TorchServe(workdir / "model_store", workdir)  # the shipped config.properties, on free ports
    (workdir / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in server.properties.items()))
    (workdir / "photo.jpg").write_bytes(jpeg(Image.fromarray(skimage.data.astronaut())))
    serve = "\n".join(line for line in serve_block.splitlines() if line.strip() != "torchserve --stop")
    serve = serve.replace("http://127.0.0.1:8080", server.inference_url).replace("--models ", "--models bad_labels.mar ", 1)
    pid_file = workdir / "tmp" / ".model_server.pid"
    errors = workdir / "serve.stderr"  # a file, not a pipe: the frontend keeps the stderr it inherits open
    try:
        started = time.time()
        with open(errors, "w") as stderr:
            served = subprocess.run(["bash", "-e", "-c", serve], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                    text=True, timeout=300)
        assert served.returncode == 0, errors.read_text()[-3000:]
        print(f"serve commands (start, five answers): {time.time() - started:.1f} s")
        answers = dict(zip(re.findall(r"for model in (.*); do", serve)[0].split(), map(json.loads, served.stdout.splitlines())))
        check_answers(answers, names)
        log = workdir / "logs" / "model_log.log"
        deadline = time.time() + 60
        while "LabelCountError" not in log.read_text() and time.time() < deadline:
            time.sleep(0.5)
        assert "labels.json names 3 classes, but the model has 1000 (logits N×1000)" in log.read_text()
        workers = re.findall(r"Worker cmdline: \[([^,\]]+)", (workdir / "logs" / "ts_log.log").read_text())
        assert workers and set(workers) == {str(host / "bin" / "python")}
        pid = int(pid_file.read_text())
        stopped = subprocess.run(["bash", "-c", "torchserve --stop"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(60)
        assert not psutil.pid_exists(pid)
    finally:
        if pid_file.exists():
            stop_tree(int(pid_file.read_text()), signal.SIGTERM, 30)


def check_answers(answers: Dict[str, object], names: Dict[str, List[str]]) -> None:
    """Each model's answer to the photo carries the made-up names of its own labels file."""
    assert sorted(answers) == ["classifier", "detector", "instance_segmenter", "keypoint_detector", "segmenter"]
    top5 = answers["classifier"]
    assert len(top5) == 5 and all(e["label"] == names["classification"][e["index"]] for e in top5)
    classes = answers["segmenter"]["classes"]
    assert classes and all(c["label"] == names["segmentation"][c["index"]] for c in classes)
    for model, task in (("detector", "detection"), ("instance_segmenter", "instance_segmentation"), ("keypoint_detector", "keypoints")):
        found = answers[model]
        assert found and all(d["label"] == names[task][d["index"]] for d in found), (model, found)
    assert len(answers["keypoint_detector"][0]["keypoints"]) == len(TOY_KEYPOINT_NAMES)
    assert "mask" in answers["instance_segmenter"][0]

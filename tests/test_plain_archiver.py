"""Issue 24, part 1: plain ``torch-model-archiver`` and ``torchserve --start`` as first-class paths.

In-process (seconds): ``tsvision export`` writes ``model-config.yaml``; ``tsvision extra-files``
stages the serving code and labels; a labels file in the model folder is found when the settings
name none; a labels count that differs from the model's classes is refused at load and by
``tsvision archive``.

End to end: the commands of the README's section "With torch-model-archiver and torchserve
directly", read from the README itself (the exports replaced by the session's, with made-up label
names), served by a real TorchServe whose Python cannot import ``tsvision``: a fresh venv that
sees the main venv's packages through a ``.pth`` line (a ``.pth`` file inside a folder added that
way is not processed, so the editable install's finder stays out), PYTHONPATH unset.
"""

from __future__ import annotations

import contextlib
import io
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

import numpy as np
import psutil
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

from tests.conftest import TASKS, jpeg
from tests.instance_toys import BrightMaskYoloSeg
from tests.keypoint_toys import TOY_KEYPOINT_NAMES, TOY_SKELETON, BrightRectanglePose
from tsvision.serving.tasks.base import LabelCountError
from tsvision.serving.tasks.detection_formats import class_count
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.archive.extra_files import main as extra_files_main
from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.model_files import write_settings
from tsvision.tools.serve.processes import stop_tree
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
SECTION = "With torch-model-archiver and torchserve directly"
HANDLERS = ROOT / "handlers"
CLASSIFIER = HANDLERS / "image_classifier.py"


# -- the README's commands ------------------------------------------------------------------
def readme_blocks() -> List[str]:
    """The bash blocks of the README's plain-TorchServe section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {SECTION}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start:end], re.S)


def command_lines(block: str) -> List[str]:
    """The block's commands, one per line, continuation lines joined as bash joins them."""
    return [line for line in block.replace("\\\n", "").splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_section_covers_every_handler_file():
    """Every file in handlers/ is archived by the section's commands, each with the labels and the export's model-config."""
    build = [line for block in readme_blocks() for line in command_lines(block) if line.startswith("torch-model-archiver")]
    used = sorted(Path(shlex.split(line)[shlex.split(line).index("--handler") + 1]).name for line in build)
    assert used == sorted(p.name for p in HANDLERS.glob("*.py")) and len(used) == 5
    for line in build:
        args = shlex.split(line)
        folder = Path(args[args.index("--serialized-file") + 1]).parent
        assert args[args.index("--config-file") + 1] == str(folder / "model-config.yaml")
        assert args[args.index("--extra-files") + 1] == f"$(tsvision extra-files --labels {folder / 'labels.json'})"


# -- export and extra-files -----------------------------------------------------------------
def test_export_writes_model_config_for_the_archiver(exports):
    for task in TASKS:
        config = yaml.safe_load((exports / task / "model-config.yaml").read_text())
        # What README says `tsvision archive` writes, and the handler section equal to settings.json.
        assert {k: config[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout")} == \
            {"batchSize": 8, "maxBatchDelay": 20, "minWorkers": 1, "maxWorkers": 1, "responseTimeout": 120}
        assert config["handler"] == json.loads((exports / task / "settings.json").read_text())
        assert config["handler"]["labels"] == "labels.json" and config["handler"]["task"] == task


def run_extra_files(args: List[str]) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = extra_files_main(args)
        except SystemExit as exit_:  # argparse's own one-line usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_extra_files_stages_the_serving_code_and_labels(tmp_path):
    labels = tmp_path / "names.txt"
    labels.write_text("cat\ndog\n\nbird\n")
    out = tmp_path / "extra"
    code, printed, _ = run_extra_files(["--out", str(out), "--labels", str(labels)])
    assert code == 0 and printed.strip() == f"{out / 'package'},{out / 'labels.json'}"
    package = out / "package"
    assert [p.name for p in package.iterdir()] == ["tsvision"]  # --extra-files copies the folder's children
    staged = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tsvision" / "serving").rglob("*.py")}
    assert staged == source | {"tsvision/__init__.py"}  # the serving code, never the tooling
    assert json.loads((out / "labels.json").read_text()) == ["cat", "dog", "bird"]
    # A stale copy (the code changed since) is replaced; nothing else is left behind.
    (package / "tsvision" / "serving" / "handler.py").write_text("stale")
    (package / "tsvision" / "serving" / "gone.py").write_text("removed since")
    code, printed, _ = run_extra_files(["--out", str(out)])
    assert code == 0 and printed.strip() == str(package)
    assert (package / "tsvision" / "serving" / "handler.py").read_text() == (ROOT / "tsvision" / "serving" / "handler.py").read_text()
    assert not (package / "tsvision" / "serving" / "gone.py").exists()
    assert not (out / "labels.json").exists()  # an earlier model's labels are never carried by mistake
    assert sorted(p.name for p in out.iterdir()) == ["package"]
    for bad in (["--labels", str(tmp_path / "nope.json")], ["--model", str(tmp_path / "nope.onnx")]):
        code, printed, error = run_extra_files(["--out", str(out), *bad])
        assert code == 2 and printed == "" and error.count("\n") == 1 and "nope" in error


# -- labels: found in the archive, and their count checked ----------------------------------------
def model_folder(tmp_path: Path, model: Path, **files: object) -> Path:
    """A worker's model folder: the model file and JSON files named by the keywords (``index_to_name``...)."""
    folder = tmp_path / "model_dir"
    folder.mkdir()
    (folder / model.name).symlink_to(model)
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder


def test_labels_found_in_the_archive_when_the_settings_name_none(exports, tmp_path):
    """A plain archive without a handler section: TorchServe's stock index_to_name.json is read; labels.json wins."""
    made_up = {str(i): f"stock-{i}" for i in range(1000)}
    folder = model_folder(tmp_path, exports / "classification" / "model.onnx", index_to_name=made_up)
    worker = LocalWorker(load_handler_class(CLASSIFIER), folder, "model.onnx", {})
    answer = worker.predict([{"body": jpeg(Image.fromarray(skimage.data.chelsea()))}])[0].json()
    assert len(answer) == 5 and all(entry["label"] == f"stock-{entry['index']}" for entry in answer)
    assert json.loads(worker.handler.describe_handle())["settings"]["labels"] == "index_to_name.json"
    worker.handler.task.close()
    (folder / "labels.json").write_text(json.dumps([f"ours-{i}" for i in range(1000)]))
    worker = LocalWorker(load_handler_class(CLASSIFIER), folder, "model.onnx", {})
    answer = worker.predict([{"body": jpeg(Image.fromarray(skimage.data.chelsea()))}])[0].json()
    assert all(entry["label"] == f"ours-{entry['index']}" for entry in answer)
    worker.handler.task.close()


@pytest.mark.parametrize("task, handler, names, classes", [
    ("classification", "image_classifier.py", 3, 1000),           # mobilenet_v3_small: ImageNet's 1000
    ("segmentation", "image_segmenter.py", 22, 21),               # lraspp: VOC's 21, background included
    ("detection", "object_detector.py", 90, 91),                  # ssdlite: COCO's 91 score columns, background included
])
def test_a_labels_count_that_differs_from_the_classes_stops_the_load(exports, tmp_path, task, handler, names, classes):
    folder = model_folder(tmp_path, exports / task / "model.onnx", labels=[f"n{i}" for i in range(names)])
    config = {"handler": {**json.loads((exports / task / "settings.json").read_text()), "labels": "labels.json"}}
    with pytest.raises(LabelCountError) as raised:
        LocalWorker(load_handler_class(HANDLERS / handler), folder, "model.onnx", config)
    message = str(raised.value)
    assert message.startswith(f"labels.json names {names} classes, but the model has {classes} (")
    assert f"0..{classes - 1}" in message
    assert ("background" in message) == (task == "detection")


def test_tsvision_archive_refuses_a_labels_count_that_differs(exports, tmp_path):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = archive_main(["--model", str(exports / "classification" / "model.onnx"), "--task", "classification",
                             "--labels", str(labels), "--name", "mismatch", "--store", str(tmp_path / "store")])
    assert code == 2 and not (tmp_path / "store" / "mismatch.mar").exists()
    assert err.getvalue().strip() == (f"tsvision archive: error: {labels} names 3 classes, but the model has 1000 (logits N×1000): "
                                      "give exactly one name per class index 0..999")


def test_a_labels_file_named_by_the_settings_must_be_there(exports, tmp_path):
    folder = model_folder(tmp_path, exports / "classification" / "model.onnx")
    with pytest.raises(FileNotFoundError, match=r"labels file 'labels.json', which is not in .*tsvision extra-files --labels"):
        LocalWorker(load_handler_class(CLASSIFIER), folder, "model.onnx", {"handler": {"task": "classification", "labels": "labels.json"}})


def test_class_counts_of_the_detection_layouts():
    """One image's outputs in each layout (docs/models.md's table) -> the classes they score."""
    zeros = np.zeros
    assert class_count("ssd", [zeros((3234, 4)), zeros((3234, 91))])[0] == 91
    assert class_count("yolov8", [zeros((84, 8400))])[0] == 80
    assert class_count("yolov5", [zeros((25200, 85))])[0] == 80
    assert class_count("rtdetr", [zeros((300, 84))])[0] == 80
    assert class_count("detr", [zeros((100, 92)), zeros((100, 4))])[0] == 91
    assert class_count("detr", [zeros((100, 4)), zeros((100, 92))])[0] == 91
    assert class_count("yolo_nms", [zeros((300, 6))]) is None  # class indices: the count does not show


# -- end to end: the README's commands on a host without tsvision ------------------------------------
@pytest.fixture(scope="module")
def yolo_toys(tmp_path_factory) -> Path:
    """Stand-ins for the README's YOLOv8n-seg and -pose exports (ultralytics takes ~20 s each): the
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

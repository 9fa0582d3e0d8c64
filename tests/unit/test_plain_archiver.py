"""Issue 24, part 1, in-process (seconds): ``tsvision export`` writes ``model-config.yaml``; ``tsvision
extra-files`` stages the serving code and labels; a labels file in the model folder is found when the
settings name none; a labels count that differs from the model's classes is refused at load and by
``tsvision archive``; the README section's commands archive every handler file. End to end (the
README's commands on a host without tsvision): tests/e2e/test_plain_archiver.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path
from typing import List

import numpy as np
import pytest
import skimage.data
import yaml
from PIL import Image

from tests.helpers import REPO, TASKS, jpeg
from tsvision.serving.formats import class_count
from tsvision.serving.tasks.base import LabelCountError
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.archive.extra_files import main as extra_files_main
from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class

ROOT = REPO
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
    return [line for line in block.replace("\\\n", "").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_section_covers_every_handler_file():
    """Every file in handlers/ but the embedder's is archived by the section's commands, each with the
    labels and the export's model-config."""
    build = [line for block in readme_blocks() for line in command_lines(block)
             if line.startswith("torch-model-archiver")]
    used = sorted(Path(shlex.split(line)[shlex.split(line).index("--handler") + 1]).name for line in build)
    # image_embedder.py's commands are in docs/embeddings.md (an embedding has no labels to make up here)
    assert used == sorted(p.name for p in HANDLERS.glob("*.py") if p.name != "image_embedder.py") and len(used) == 5
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
        assert {k: config[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers",
                                       "responseTimeout")} == \
            {"batchSize": 4, "maxBatchDelay": 20, "minWorkers": 2, "maxWorkers": 2, "responseTimeout": 120}
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
    assert (package / "tsvision" / "serving" / "handler.py").read_text() == \
        (ROOT / "tsvision" / "serving" / "handler.py").read_text()
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
    ("classification", "image_classifier.py", 3, 1000),  # mobilenet_v3_small: ImageNet's 1000
    ("segmentation", "image_segmenter.py", 22, 21),      # lraspp: VOC's 21, background included
    ("detection", "object_detector.py", 90, 91),         # ssdlite: COCO's 91 score columns, background included
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
    assert err.getvalue().strip() == (f"tsvision archive: error: {labels} names 3 classes, "
                                      "but the model has 1000 (logits N×1000): "
                                      "give exactly one name per class index 0..999")


def test_a_labels_file_named_by_the_settings_must_be_there(exports, tmp_path):
    folder = model_folder(tmp_path, exports / "classification" / "model.onnx")
    with pytest.raises(FileNotFoundError,
                       match=r"labels file 'labels.json', which is not in .*tsvision extra-files --labels"):
        LocalWorker(load_handler_class(CLASSIFIER), folder, "model.onnx",
                    {"handler": {"task": "classification", "labels": "labels.json"}})


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

"""The AOTInductor (.pt2) backend matches eager PyTorch and the other backends (a speed-up that keeps
the answers; moved out of tests/unit/test_speedups.py because its export compiles C++ with g++)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import TOY_SETTINGS, jpeg
from tests.scenes import colour_scene
from tests.toy_models import TOY_SEGMENTATION_LABELS, ColourSegmenter
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.model_files import export_files


@pytest.fixture(scope="module")
def toy_pt2(tmp_path_factory):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.fail("AOTInductor needs a C++ compiler (g++); scripts/setup.sh's machine has one")
    folder = tmp_path_factory.mktemp("pt2") / "segmentation"
    exportable = Exportable("segmentation", "toy-segmentation", ColourSegmenter().eval(),
                            dict(TOY_SETTINGS["segmentation"]), TOY_SEGMENTATION_LABELS, False, ["logits"])
    report = export_files(exportable, folder, pt2=True)
    (folder / "labels.json").write_text(json.dumps(TOY_SEGMENTATION_LABELS))
    return folder, report


def test_pt2_export_matches_eager(toy_pt2):
    folder, report = toy_pt2
    assert (folder / "model.pt2").stat().st_size > 0
    assert report["ok"] and report["max_abs_diff"]["pt2_vs_eager"] <= report["tolerance"]
    assert report["pt2_compile_seconds"] > 0


def toy_task(folder, model_file: str):
    settings = Settings.from_mapping({"task": "segmentation", "labels": "labels.json", **TOY_SETTINGS["segmentation"]})
    return build_task(folder / model_file, settings, folder)


def test_pt2_task_answers_like_onnx_on_any_batch(toy_pt2):
    folder, _ = toy_pt2
    scene, truth = colour_scene(333, 777)
    images = [jpeg(scene, quality=98)] * 3  # a batch size the export never saw
    pt2_task = toy_task(folder, "model.pt2")
    pt2, onnx = pt2_task.run(images), toy_task(folder, "model.onnx").run(images)
    assert pt2_task.runtime.name == "pt2"
    assert pt2 == onnx

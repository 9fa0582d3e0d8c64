"""The format registry (``tsvision.serving.formats``): what the settings, the task selection and the
tools read from it, its order, and that a new file in the package is a new format."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FixedOutputs
from tsvision.serving import formats
from tsvision.serving.formats import registry
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import task_class
from tsvision.serving.tasks.detection import DetectionTask


def test_what_the_settings_and_tools_read():
    assert formats.names("keypoints") == ("torchvision", "yolov8_pose")
    assert formats.names("instance_segmentation") == ("torchvision", "yolov8_seg")
    assert set(formats.names("detection")) == {"ssd", "yolov8", "yolov5", "yolo_nms", "detr", "rtdetr", "torchvision",
                                               "yolov8_obb"}
    assert formats.background_names() == ("ssd", "torchvision")
    assert formats.ultralytics_tasks() == {"detect": ("detection", "yolov8"),
                                           "segment": ("instance_segmentation", "yolov8_seg"),
                                           "pose": ("keypoints", "yolov8_pose"), "obb": ("detection", "yolov8_obb")}
    assert [r.name for r in formats.records() if r.nms_free and r.decode is not None] == ["yolo_nms"]
    keys = [(r.task, r.name) for r in formats.records()]
    assert len(keys) == len(set(keys))
    for record in formats.records():  # every named task class exists and is a task of the record's task
        cls = record.load_task_class()
        assert cls.name == record.task, record


def test_the_order_does_not_depend_on_which_format_file_came_first():
    """Modules by name, records in their FORMATS order, whatever was imported before."""
    script = "import {}; from tsvision.serving import formats; print(formats.names())"
    first = [subprocess.run([sys.executable, "-c", script.format(module)], capture_output=True, text=True,
                            check=True).stdout
             for module in ("tsvision.serving.formats.yolo", "tsvision.serving.formats.torchvision", "json")]
    assert first[0] == first[1] == first[2] and first[0].startswith("('detr', 'ssd', 'torchvision', 'yolov8'")


def test_a_new_file_is_a_new_format(tmp_path, monkeypatch):
    """A file dropped into the package with its FORMATS: settings accept the name, take its defaults,
    and DetectionTask decodes with it; nothing else is edited."""
    (tmp_path / "zz_toy.py").write_text(textwrap.dedent('''
        import numpy as np
        from tsvision.serving.formats.registry import Candidates, Format

        def decode(outputs, settings, placement):
            rows = outputs[0]  # K×5: x1, y1, x2, y2, score (class 0)
            keep = rows[:, 4] > settings.score_threshold
            return Candidates(rows[keep, :4].astype(np.float32), rows[keep, 4].astype(np.float32),
                              np.zeros(int(keep.sum()), np.int64))

        FORMATS = (Format("zz_toy", "detection", decode, resize={"input_size": 100},
                          defaults={"score_threshold": 0.4}),)
    '''))
    monkeypatch.setattr(formats, "__path__", [*formats.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_RECORDS", {})
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        settings = Settings.from_mapping({"task": "detection", "detection_format": "zz_toy"})
        assert (settings.input_size, settings.score_threshold) == (100, 0.4)
        assert task_class(settings) is DetectionTask

        rows = np.array([[10, 10, 50, 50, 0.9], [60, 60, 90, 90, 0.3]], np.float32)
        answer = DetectionTask(FixedOutputs(rows), settings).run([Image.new("RGB", (200, 200))])[0]
        assert [(d["score"], d["box"]) for d in answer] == [(pytest.approx(0.9), [20, 20, 100, 100])]
    finally:
        sys.modules.pop("tsvision.serving.formats.zz_toy", None)
        monkeypatch.undo()
    with pytest.raises(ValueError, match="detection_format must be one of"):  # gone with its file
        Settings.from_mapping({"task": "detection", "detection_format": "zz_toy"})

"""Models exported without a dynamic batch axis: run in chunks of their batch size (issue 14)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.helpers import png
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task
from tsvision.tools.archive.cli import main as archive_main

SIZE = 32
SETTINGS = {"task": "classification", "input_size": SIZE, "resize_size": 36, "top_k": 3}


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, images):
        return self.fc(torch.relu(self.conv(images)).mean(dim=(2, 3)))


@pytest.fixture(scope="module", params=[1, 2])
def plain_onnx(request, tmp_path_factory) -> Path:
    """What a plain ``torch.onnx.export(model, torch.randn(B, 3, S, S), f)`` writes: batch B only."""
    path = tmp_path_factory.mktemp("fixed") / f"batch{request.param}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # external_data=False: torch 2.14 otherwise writes the weights beside the file (*.onnx.data),
        # which the archive does not carry.
        torch.onnx.export(TinyClassifier().eval(), torch.randn(request.param, 3, SIZE, SIZE), str(path), external_data=False)
    return path


def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((333, 777), (64, 40), (1280, 720))]


def test_runtime_reads_the_fixed_batch(plain_onnx):
    task = build_task(plain_onnx, Settings.from_mapping(SETTINGS))
    assert task.runtime.fixed_batch == int(plain_onnx.stem[-1])


def test_batch_of_three_equals_one_by_one(plain_onnx):
    task = build_task(plain_onnx, Settings.from_mapping(SETTINGS))
    rows = [{"body": png(image)} for image in images()]
    together = answer_requests(task, rows)
    alone = [answer_requests(task, [row])[0] for row in rows]
    assert [r.status for r in together] == [200, 200, 200]
    for a, b in zip(together, alone):
        assert [x["index"] for x in a.body] == [x["index"] for x in b.body]
        assert np.allclose([x["score"] for x in a.body], [x["score"] for x in b.body], atol=1e-5)


def test_archive_accepts_and_reports_a_fixed_batch(plain_onnx, tmp_path, capsys):
    overrides = [f"--set={k}={json.dumps(v)}" for k, v in SETTINGS.items() if k != "task"]
    code = archive_main(["--model", str(plain_onnx), "--task", "classification", "--name", "fixed",
                         "--store", str(tmp_path), *overrides])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert f"fixed batch size of {plain_onnx.stem[-1]}" in out and "one forward pass per" in out


def test_weights_in_an_external_data_file_travel_with_the_model(tmp_path, capsys):
    """torch 2.14's plain ``torch.onnx.export`` of a real classifier writes model.onnx plus
    model.onnx.data; the archive's check serves the model with both, the archive carries both, and
    a missing data file is a clear error."""
    import zipfile

    import torchvision

    path = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torchvision.models.mobilenet_v3_small().eval(), torch.randn(2, 3, 224, 224), str(path))
    assert (tmp_path / "plain.onnx.data").is_file()  # what the exporter does by default for this size
    assert archive_main(["--model", str(path), "--task", "classification", "--name", "plain", "--store", str(tmp_path / "store")]) == 0
    with zipfile.ZipFile(tmp_path / "store" / "plain.mar") as archive:
        assert {"plain.onnx", "plain.onnx.data"} <= set(archive.namelist())
    (tmp_path / "plain.onnx.data").rename(tmp_path / "elsewhere.data")
    assert archive_main(["--model", str(path), "--task", "classification", "--name", "broken", "--store", str(tmp_path / "store")]) == 2
    assert "plain.onnx.data, which is missing" in capsys.readouterr().err

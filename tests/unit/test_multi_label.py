"""Multi-label classification (issue 29, part 3) in-process: the colour toy (tests/toy_models.py
ColourTagger) whose sigmoid scores follow from the pixel values alone, thresholds per class, the
per-request score_threshold and its 400s, and ``tsvision export --multi-label`` on a torchvision
classifier with a checkpoint, checked against eager PyTorch. Served live: tests/e2e/test_served_labels.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.helpers import BACKENDS, png
from tests.toy_models import TOY_TAG_GAIN
from tsvision.serving.geometry import normalize, resize_center_crop
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import load_export
from tsvision.serving.tasks.multi_label import MultiLabelClassificationTask
from tsvision.tools.export.cli import main as export_main

PURPLE = (255, 0, 200)  # red 1.0, green 0, blue 0.784


def expected_score(channel_value: int) -> float:
    """The toy's sigmoid score of a tag on a flat image: from its definition, not from the handler."""
    return 1.0 / (1.0 + math.exp(-TOY_TAG_GAIN * (channel_value / 255 - 0.5)))


def flat(colour, size=(48, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_red_and_blue_image_answers_exactly_red_and_blue(tagger, backend):
    task = load_export(tagger, BACKENDS[backend])
    assert isinstance(task, MultiLabelClassificationTask)
    answer = task.run([flat(PURPLE)])[0]
    assert [entry["label"] for entry in answer] == ["red", "blue"]  # green (score ~5e-5) is not, best first
    assert [entry["index"] for entry in answer] == [0, 2]
    for entry, value in zip(answer, (255, 200)):
        assert entry["score"] == pytest.approx(expected_score(value), abs=1e-5)
    assert [e["label"] for e in task.run([flat((0, 255, 0))])[0]] == ["green"]
    assert task.run([flat((0, 0, 0))])[0] == []  # no tag: an empty answer, not an error


def test_thresholds_per_class_and_per_request(tagger):
    # blue scores 0.9966 on PURPLE: a class threshold of 0.999 drops it; red (0.99995) stays
    task = load_export(tagger, "model.onnx", class_thresholds={"blue": 0.999})
    assert [e["label"] for e in task.run([flat(PURPLE)])[0]] == ["red"]
    # an index as the key; a threshold of 0 lets green (score ~5e-5) through
    task = load_export(tagger, "model.onnx", class_thresholds={"1": 0.0})
    assert [e["label"] for e in task.run([flat(PURPLE)])[0]] == ["red", "blue", "green"]
    # a dim red (130/255): its score 0.599 passes the default 0.5, not a request's 0.6
    task = load_export(tagger, "model.onnx")
    dim = png(flat((130, 0, 0)))
    score = expected_score(130)
    assert 0.5 < score < 0.6
    plain, strict, loose = answer_requests(task, [{"body": dim}, {"data": dim, "score_threshold": "0.6"},
                                                  {"data": dim, "score_threshold": "0"}])
    assert [e["label"] for e in plain.body] == ["red"] and plain.body[0]["score"] == pytest.approx(score, abs=1e-5)
    assert strict.status == 200 and strict.body == []
    assert [e["label"] for e in loose.body] == ["red", "green", "blue"]  # green and blue tie: by index
    # top_k caps the labels that pass, best first
    top = answer_requests(task, [{"data": png(flat(PURPLE)), "top_k": "1"}])[0]
    assert [e["label"] for e in top.body] == ["red"]


@pytest.mark.parametrize("value", ["high", "1.5", "-0.1", "nan", True])
def test_a_bad_score_threshold_is_that_request_s_400(tagger, value):
    task = load_export(tagger, "model.onnx")
    good = png(flat(PURPLE))
    bad, fine = answer_requests(task, [{"data": good, "score_threshold": value}, {"body": good}])
    assert bad.status == 400 and bad.body["type"] == "BadOption" and "score_threshold" in bad.body["message"]
    assert fine.status == 200 and [e["label"] for e in fine.body] == ["red", "blue"]


@pytest.mark.parametrize("values, said", [
    ({"class_thresholds": {"purple": 0.5}}, "purple"),
    ({"class_thresholds": {"7": 0.5}}, "'7'"),
])
def test_unknown_classes_in_the_threshold_map_are_refused_at_load(tagger, values, said):
    with pytest.raises(ValueError, match=said):
        load_export(tagger, "model.onnx", **values)


@pytest.mark.parametrize("values, said", [
    ({"task": "classification", "multi_label": True, "class_thresholds": {"red": 1.5}}, "from 0 to 1"),
    ({"task": "classification", "multi_label": True, "class_thresholds": {"red": "high"}}, "from 0 to 1"),
    ({"task": "classification", "multi_label": True, "class_thresholds": []}, "non-empty map"),
    ({"task": "classification", "class_thresholds": {"red": 0.5}}, "multi_label: true only"),
    ({"task": "classification", "multi_label": True, "score_threshold": 2}, "between 0 and 1"),
    ({"task": "segmentation", "multi_label": True}, "classification task only"),
])
def test_bad_multi_label_settings_are_refused(values, said):
    with pytest.raises(ValueError, match=said):
        Settings.from_mapping(values)


def test_export_multi_label_from_a_checkpoint_answers_as_eager_sigmoid(tmp_path):
    """``tsvision export --multi-label`` on a torchvision classifier and a checkpoint: the settings say
    multi_label and top_k = every class, and the answer is every class whose eager sigmoid score passes."""
    labels = ["cat", "dog", "car", "tree"]
    torch.manual_seed(3)
    model = torchvision.models.mobilenet_v3_small(num_classes=len(labels)).eval()
    with torch.no_grad():  # a head whose sigmoid scores straddle the threshold
        model.classifier[3].weight.mul_(50.0)
        model.classifier[3].bias.copy_(torch.tensor([2.0, -2.0, 0.5, -0.5]))
    torch.save(model.state_dict(), tmp_path / "tags.pt")
    (tmp_path / "tags.json").write_text(json.dumps(labels))
    out = tmp_path / "export"
    assert export_main(["--task", "classification", "--arch", "mobilenet_v3_small", "--checkpoint",
                        str(tmp_path / "tags.pt"), "--labels", str(tmp_path / "tags.json"), "--multi-label",
                        "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["multi_label"] is True and settings["top_k"] == len(labels)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8))
    s = Settings.from_mapping(settings)
    batch = normalize(resize_center_crop(image, s.resize_size, s.input_size, s.interpolation)[None], s.mean, s.std)
    with torch.no_grad():
        eager = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(batch)))).numpy()[0]
    expected = [labels[i] for i in np.argsort(-eager) if eager[i] >= 0.5]
    assert 0 < len(expected) < len(labels), eager  # the case tells something
    for backend in BACKENDS.values():
        answer = load_export(out, backend).run([image])[0]
        assert [e["label"] for e in answer] == expected, (backend, eager)
        assert np.allclose([e["score"] for e in answer], sorted(eager[eager >= 0.5], reverse=True), atol=1e-4)

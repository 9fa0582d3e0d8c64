"""``tsvision export --weights NAME``: torchvision's pretrained weights through torch's hub cache, offline.

No weights can be downloaded here, so each test places a seeded random state dict (conditioned so
that its answers are well separated) in a temporary ``TORCH_HOME`` under the file name torchvision's
URL gives; torch.hub loads a cached file without checking its hash. The answers of the export must
then equal torchvision's own ``weights.transforms()`` + model built with ``weights=`` the same enum.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights
from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights

from tests.checks import assert_same_classification
from tsvision.serving.settings import Settings, load_labels
from tsvision.serving.tasks import load_export, task_class
from tsvision.serving.tasks.segmentation import decode_png
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.export.calibration import recompute_batchnorm
from tsvision.tools.export.cli import main as export_main

CLASSIFICATION = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
SEGMENTATION = LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1
DETECTION = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1


def cached_name(weights) -> str:
    """The file name torch.hub keeps a download under: the last part of the URL."""
    return weights.url.rsplit("/", 1)[-1]


def place(weights, model: torch.nn.Module, home: Path) -> Path:
    path = home / "hub" / "checkpoints" / cached_name(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def spread_class_logits(layers, num_classes: int, gain: float, keep: int = 1) -> None:
    """Zero every class of the conv ``layers`` (channels anchor × class) but ``keep``, and amplify
    that one: its scores then range over (0, 1) and rankings are not decided by rounding."""
    with torch.no_grad():
        for conv in layers:
            for channel in range(conv.out_channels):
                if channel % num_classes == keep:
                    conv.weight[channel] *= gain
                elif channel % num_classes:
                    conv.weight[channel] = 0
                    conv.bias[channel] = 0


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    return fill_hub_cache(tmp_path_factory.mktemp("torch_home"))


def fill_hub_cache(home: Path) -> Path:
    """A hub cache holding a seeded, conditioned random state dict for each of the three weights."""
    torch.manual_seed(11)
    classifier = torchvision.models.mobilenet_v3_small(weights=None)
    recompute_batchnorm(classifier, 0, (4, 3, 224, 224), 3)
    with torch.no_grad():  # logits near 0.006 apart: spread them to a standard deviation of 3 on a photo
        layer = classifier.classifier[-1]
        layer.weight *= 3.0 / float(classifier(CLASSIFICATION.transforms()(photo("coffee"))[None]).std())
    place(CLASSIFICATION, classifier, home)
    torch.manual_seed(11)
    segmenter = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    recompute_batchnorm(segmenter, 0, (2, 3, 256, 256), 3)
    place(SEGMENTATION, segmenter, home)
    torch.manual_seed(11)
    detector = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    recompute_batchnorm(detector.backbone, 0, (2, 3, 320, 320), 3)
    spread_class_logits([m[-1] for m in detector.head.classification_head.module_list], 91, gain=80.0)
    place(DETECTION, detector, home)
    return home


@pytest.fixture
def offline(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("TSVISION_OFFLINE", "1")  # never the network, even where there is one
    return torch_home


class EagerRuntime:
    """The exported module itself as a runtime: the task's own preprocessing and answers around it."""

    name, device, fixed_batch = "eager", "cpu", None

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def run(self, batch: np.ndarray):
        with torch.no_grad():
            outputs = self.module(torch.from_numpy(batch))
        return [t.numpy() for t in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]


def in_process(task: str, weights: str, **overrides):
    exportable = build_exportable(task, weights=weights)
    settings = Settings.from_mapping({"task": task, **exportable.settings, **overrides})
    return exportable, task_class(settings)(EagerRuntime(exportable.module), settings, exportable.labels)


def test_classification_weights_are_exported_and_answer_as_torchvision(offline, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert export_main(["--task", "classification", "--weights", "IMAGENET1K_V1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "RANDOM" not in printed.err and "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in printed.out
    settings = json.loads((out / "settings.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert settings["random_weights"] is False and report["random_weights"] is False and report["ok"]
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in settings["description"]
    assert load_labels(out / "labels.json") == CLASSIFICATION.meta["categories"]
    preset = CLASSIFICATION.transforms()
    assert (settings["input_size"], settings["resize_size"]) == (preset.crop_size[0], preset.resize_size[0])
    assert settings["mean"] == list(preset.mean) and settings["std"] == list(preset.std)

    model = torchvision.models.mobilenet_v3_small(weights=CLASSIFICATION).eval()  # torch.hub: the same cached file
    task = load_export(out, "model.onnx")
    for name in ("chelsea", "coffee"):
        with torch.no_grad():
            probabilities = model(preset(photos[name])[None]).softmax(-1)[0].numpy()
        top = np.argsort(-probabilities)[:5]
        assert probabilities[top[0]] > 2 * probabilities[top[4]], "the placed weights must separate their answers"
        expected = [{"label": CLASSIFICATION.meta["categories"][i], "index": int(i), "score": float(probabilities[i])}
                    for i in top]
        assert_same_classification(task.run([photos[name]])[0], expected, score_tol=5e-4)


def test_segmentation_weights_answer_as_torchvision(offline):
    """``resize_mode: shorter_side``, as the preset: the same masks on square and non-square photos
    (with the old ``letterbox`` far fewer of the non-square photos' pixels agreed: docs/models.md)."""
    exportable, task = in_process("segmentation", "DEFAULT")
    assert exportable.random_weights is False and exportable.weights == str(SEGMENTATION)
    assert exportable.labels == SEGMENTATION.meta["categories"]
    assert exportable.settings["input_size"] == SEGMENTATION.transforms().resize_size[0]
    assert exportable.settings["resize_mode"] == "shorter_side"
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=SEGMENTATION).eval()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):  # 512×512, 451×300, 600×400, 640×427
        image = photo(name)
        with torch.no_grad():
            logits = model(SEGMENTATION.transforms()(image)[None])["out"]
            expected = torch.nn.functional.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False)
        expected = expected[0].argmax(0).numpy()
        mask = decode_png(task.run([image])[0]["mask"])
        assert len(np.unique(expected)) >= 2, "the placed weights must find more than one class"
        assert (mask == expected).mean() >= 0.999, (name, (mask == expected).mean())


def test_detection_weights_answer_as_torchvision(offline, photos):
    """SSDlite resizes as torchvision's model does inside (``interpolation: bilinear_float``): whole
    photos the model must resize (PIL's antialiased filter gave 10 vs 8 and 5 vs 7 detections)."""
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=DETECTION).eval()
    exportable, task = in_process("detection", "COCO_V1", max_detections=model.detections_per_img)  # rocket: 124
    assert exportable.random_weights is False and exportable.settings.get("score_threshold") is None  # the default, 0.5
    assert exportable.settings["interpolation"] == "bilinear_float"
    assert exportable.labels == DETECTION.meta["categories"]
    images = {**photos, "crop 320x320": photos["astronaut"].crop((100, 0, 420, 320))}  # the model's own size
    for name, image in images.items():
        with torch.no_grad():
            found = model([DETECTION.transforms()(image)])[0]
        keep = found["scores"] > 0.5
        answer = task.run([image])[0]
        assert 3 <= len(answer) == int(keep.sum()), (name, len(answer), found["scores"][:10])
        assert [d["index"] for d in answer] == found["labels"][keep].tolist(), name
        np.testing.assert_allclose([d["score"] for d in answer], found["scores"][keep].numpy(), atol=1e-4, err_msg=name)
        np.testing.assert_allclose([d["box"] for d in answer], found["boxes"][keep].numpy(), atol=0.01, err_msg=name)


def test_rcnn_weights_load_from_the_cache_unconditioned(offline):
    """A whole torchvision detector (the Faster/Mask/Keypoint R-CNN path): exactly the cached weights,
    not conditioned like random ones, the model's own transform, the default score threshold."""
    weights = torchvision.models.detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1
    torch.manual_seed(5)
    placed = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    place(weights, placed, offline)
    exportable = build_exportable("detection", "fasterrcnn_mobilenet_v3_large_320_fpn", weights="DEFAULT")
    assert exportable.random_weights is False and exportable.weights == str(weights)
    assert exportable.settings["detection_format"] == "torchvision" and "score_threshold" not in exportable.settings
    assert exportable.labels == weights.meta["categories"]
    state = exportable.module.state_dict()
    for key, value in placed.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # FrozenBatchNorm2d, as torchvision builds trained detectors
            assert torch.equal(state[key], value), key


@pytest.mark.parametrize("task, architecture, name, expected", [
    ("instance_segmentation", "maskrcnn_resnet50_fpn_v2", "DEFAULT", "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"),
    ("keypoints", "keypointrcnn_resnet50_fpn", "COCO_LEGACY", "KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY"),
    ("detection", "retinanet_resnet50_fpn", "RetinaNet_ResNet50_FPN_Weights.COCO_V1", "RetinaNet_ResNet50_FPN_Weights.COCO_V1"),
    ("classification", "resnet50", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"),
])
def test_weights_names_resolve_to_torchvision_and_its_cache_file(task, architecture, name, expected, tmp_path, monkeypatch):
    from tsvision.tools.export.pretrained import cache_file, resolve_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = resolve_weights(task, architecture, name)
    assert weights is torchvision.models.get_weight(expected)
    assert cache_file(weights) == tmp_path / "hub" / "checkpoints" / cached_name(weights)


@pytest.mark.parametrize("arguments, words", [
    (["--task", "keypoints", "--weights", "DEFAULT"], ["keypointrcnn_mobilenet_v3_large_320_fpn", "keypointrcnn_resnet50_fpn"]),
    (["--task", "instance_segmentation", "--weights", "DEFAULT"], ["maskrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn_v2"]),
    (["--task", "classification", "--weights", "IMAGENET1K_V7"], ["IMAGENET1K_V1", "DEFAULT"]),
    (["--task", "classification", "--arch", "resnet18", "--weights", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"], ["ResNet18_Weights"]),
    (["--task", "classification", "--model-arg", "weights=DEFAULT"], ["--weights NAME"]),
    (["--task", "classification", "--weights", "DEFAULT", "--num-classes", "3"], ["1000 classes", "--checkpoint"]),
    (["--task", "detection", "--arch", "yolov8n", "--weights", "DEFAULT"], ["--checkpoint"]),
])
def test_weights_mistakes_are_one_line(arguments, words, offline, tmp_path, capsys):
    assert export_main([*arguments, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_the_weights_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    placed = tmp_path / "hub" / "checkpoints" / cached_name(CLASSIFICATION)
    placed.parent.mkdir(parents=True)
    placed.write_text("not a checkpoint\n")
    assert export_main(["--task", "classification", "--weights", "DEFAULT", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(placed) in err and CLASSIFICATION.url in err, err


def test_weights_with_checkpoint_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "x.pth").write_bytes(b"")  # exists: the refusal is about the pair, not a missing file
    with pytest.raises(SystemExit) as exit_:
        export_main(["--task", "classification", "--weights", "DEFAULT", "--checkpoint", str(tmp_path / "x.pth")])
    assert exit_.value.code == 2 and "exclude each other" in capsys.readouterr().err


def test_missing_weights_file_fails_fast_in_one_line_naming_file_and_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TSVISION_OFFLINE", "1")
    started = time.time()
    assert export_main(["--task", "detection", "--weights", "DEFAULT", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "hub" / "checkpoints" / cached_name(DETECTION)) in err and DETECTION.url in err
    assert time.time() - started < 30


@pytest.mark.parametrize("weights", [torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1, CLASSIFICATION])
def test_classification_input_is_the_weights_preset(weights):
    """The served input equals ``weights.transforms()`` (bicubic for EfficientNet, bilinear for
    MobileNetV3) within a grey level; the other filter would be 20 and more off."""
    from tsvision.serving.geometry import normalize, resize_center_crop
    from tsvision.tools.export.pretrained import settings_from_preset

    s = settings_from_preset("classification", weights)
    other = {"bilinear": "bicubic", "bicubic": "bilinear"}[s["interpolation"]]
    for name in ("chelsea", "rocket"):
        expected = weights.transforms()(photo(name)).numpy()
        for interpolation, low, high in ((s["interpolation"], 0, 1.5), (other, 10, 255)):
            ours = normalize(resize_center_crop(photo(name), s["resize_size"], s["input_size"], interpolation)[None],
                             s["mean"], s["std"])[0]
            grey_levels = float((np.abs(ours - expected) * np.asarray(s["std"])[:, None, None]).max() * 255)
            assert low <= grey_levels <= high, (name, interpolation, grey_levels)


def test_a_silent_server_times_out_in_one_line(tmp_path, monkeypatch):
    """A download that never answers (a firewall that drops, a dead proxy) gives up after the socket timeout."""
    import socket
    from types import SimpleNamespace

    from tsvision.tools.export.pretrained import WeightsError, ensure_cached

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("TSVISION_OFFLINE", raising=False)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connections complete in the backlog; nothing is ever sent
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/models/net-0123abcd.pth"
        started = time.time()
        with pytest.raises(WeightsError) as error:
            ensure_cached(SimpleNamespace(url=url), timeout=1.0)
    assert time.time() - started < 10
    message = str(error.value)
    assert "\n" not in message and "timed out" in message and str(tmp_path / "hub" / "checkpoints" / "net-0123abcd.pth") in message

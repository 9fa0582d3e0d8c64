"""Keypoints (issue 15) served by the run's TorchServe: the toys of both contracts, the random
conditioned Keypoint R-CNN against its archived model file called directly, YOLOv8n-pose against
ultralytics' predictor, multi-image requests, describe, options and pictures in one batch. The six
archives are registered on the one server for this module (tests/e2e/conftest.py ``registered``)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from tests.e2e.conftest import registered
from tests.helpers import SCENES, all_at_once, photo, png
from tests.keypoint_checks import (
    RCNN_PHOTOS,
    assert_toy_truth,
    check_person_schema,
    compare_with_rcnn_file,
    compare_with_ultralytics,
)
from tests.keypoint_toys import TOY_KEYPOINT_NAMES, TOY_SKELETON, true_keypoints
from tests.scenes import bright_box_scene
from tsvision.serving.drawing import box_colour
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ARCHIVES = {"toy_rcnn_torchscript": ("toy_rcnn", "model.pt"), "toy_rcnn_onnx": ("toy_rcnn", "model.onnx"),
            "toy_pose_torchscript": ("toy_pose", "model.pt"), "toy_pose_onnx": ("toy_pose", "model.onnx"),
            "krcnn_onnx": ("krcnn", "model.onnx"),  # its TorchScript file is checked in-process
            "yolov8n_pose": ("yolo_pose", "model.onnx")}



@pytest.fixture(scope="module", autouse=True)
def keypoint_archives(served, keypoint_toys, krcnn, yolo_pose):
    """All six archives, built with the archive CLI and registered on the run's TorchServe. The
    Keypoint R-CNN archives run torch on one thread (threads=1), as their in-process references do."""
    folders = {"toy_rcnn": keypoint_toys / "toy_rcnn", "toy_pose": keypoint_toys / "toy_pose", "krcnn": krcnn[0],
               "yolo_pose": yolo_pose}
    archives = {}
    for name, (folder, filename) in ARCHIVES.items():
        extra = ["--set", "threads=1"] if folder == "krcnn" else []
        archives[name] = ["--model", str(folders[folder] / filename),
                          "--settings", str(folders[folder] / "settings.json"),
                          "--max-batch-delay", "300", *extra]
    with registered(served, archives) as names:
        yield names


def post(server, name: str, body: bytes, content_type: str = "image/png") -> list:
    response = server.predict(name, body, content_type=content_type, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", [n for n in ARCHIVES if n.startswith("toy")])
def test_served_toy_keypoints_land_on_the_corners(served, name):
    errors = []
    for width, height in SCENES:
        image, truth = bright_box_scene(width, height)
        errors.append(assert_toy_truth(post(served, name, png(image)), truth, ARCHIVES[name][0]))
    print(f"\nserved {name}: largest box/point error {max(errors):.2f} px")


@pytest.mark.parametrize("name", ["toy_pose_onnx", "toy_rcnn_torchscript", "krcnn_onnx"])
def test_served_multi_image_request_equals_one_by_one(served, name):
    images = [bright_box_scene(w, h)[0] for w, h in SCENES + [(777, 333)]] if name.startswith("toy") else \
        [photo(n) for n in RCNN_PHOTOS] + [photo("astronaut").resize((300, 451))]
    bodies = [png(image) for image in images]
    listed = json.dumps([base64.b64encode(b).decode() for b in bodies]).encode()
    together = post(served, name, listed, "application/json")
    assert together == [post(served, name, body) for body in bodies]


def test_served_keypoint_rcnn_equals_the_archived_model_file(served, krcnn):
    folder, exportable, _ = krcnn
    backend = "onnx"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = Settings.from_mapping(json.loads((folder / "settings.json").read_text())).to_mapping()
        compared = compare_with_rcnn_file(lambda image: post(served, f"krcnn_{backend}", png(image)), folder,
                                          backend, settings, exportable.labels, f"served krcnn_{backend}")
        for _, _, figures in compared:
            assert figures["box"] <= 1.0 and figures["score"] <= 1e-3 and figures["point"] <= 1.0
    finally:
        torch.set_num_threads(threads)


def test_served_yolov8n_pose_equals_ultralytics_predictor(served, yolo_pose):
    """ultralytics' predictor on the same ONNX file, at its defaults (conf 0.25, iou 0.7) with
    ``rect=False``: the full 640×640 letterbox, as tsvision pads (ultralytics' default for a
    dynamic ONNX pads only to a multiple of 32, a different input)."""
    compared = compare_with_ultralytics(lambda image: post(served, "yolov8n_pose", png(image)), yolo_pose,
                                        "served yolov8n_pose")
    for _, image, ours in compared:
        check_person_schema(ours, *image.size, 17)
    assert sum(len(ours) for _, _, ours in compared) >= 2, "the conditioned model should find persons on these photos"


COCO = (list(COCO_KEYPOINT_NAMES), [list(e) for e in COCO_SKELETON])


@pytest.mark.parametrize("name, names, edges", [("krcnn_onnx", *COCO), ("yolov8n_pose", *COCO),
                                                ("toy_pose_onnx", TOY_KEYPOINT_NAMES, TOY_SKELETON)])
def test_served_describe_carries_keypoint_names_and_skeleton(served, name, names, edges):
    response = requests.get(f"{served.management_url}/models/{name}?customized=true",
                            headers=served.headers("management"), timeout=60)
    assert response.status_code == 200, response.text
    about = response.json()[0]["customizedMetadata"]
    about = json.loads(about) if isinstance(about, str) else about
    assert about["handler"] == "KeypointDetector" and about["task"] == "keypoints"
    assert about["keypoints"] == {"names": names, "skeleton": edges}
    bad = served.predict(name, b"\xff\xd8\xff\xe0 cut short")
    assert bad.status_code == 400 and bad.json()["type"] == "UnreadableImage"


@pytest.mark.parametrize("name", ["toy_rcnn_onnx", "toy_pose_torchscript"])
def test_served_options_and_pictures_in_one_batch(served, name):
    """Concurrent requests (batch delay 300 ms): the plain answer, a lower score_threshold (the
    same person: a superset), one above the toy's 0.9 (nothing), a bad option (its own 400), and a
    picture with the skeleton's dots where the truth puts the keypoints."""
    image, truth = bright_box_scene(1280, 720)
    data = base64.b64encode(png(image)).decode("ascii")
    url = f"{served.inference_url}/predictions/{name}"
    cases = [({}, {}), ({"score_threshold": 0.1}, {}), ({"score_threshold": 0.95}, {}), ({"top_k": 3}, {}),
             ({}, {"Accept": "image/png"})]
    def send(case):
        options, headers = case
        return requests.post(url, json={"data": data, **options}, headers={**served.headers("inference"), **headers},
                             timeout=120)

    plain, lower, none, bad, drawn = all_at_once(send, cases)
    assert max(int(r.headers.get("X-Batch-Size", 0)) for r in (plain, lower, none, bad, drawn)) > 1
    assert plain.status_code == lower.status_code == none.status_code == 200
    assert assert_toy_truth(plain.json(), truth, name.rsplit("_", 1)[0]) is not None
    assert lower.json() == plain.json() and none.json() == []
    assert bad.status_code == 400 and bad.json()["type"] == "UnknownOption"
    assert "'score_threshold'" in bad.json()["message"]
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(drawn.content)).convert("RGB"))
    assert pixels.shape == (720, 1280, 3)
    for k, (x, y) in enumerate(true_keypoints(truth)):
        assert tuple(pixels[int(y), int(x)]) == box_colour(k), (k, x, y)

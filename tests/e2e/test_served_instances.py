"""Instance segmentation (issue 15) served by the run's TorchServe: every archive of the family
registered on the one server for this module (tests/e2e/conftest.py ``registered``)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.e2e.conftest import registered
from tests.helpers import SCENES, png
from tests.instance_checks import (
    BACKENDS,
    TOY_SETTINGS,
    check_toy_answer,
    compare_with_mask_rcnn_file,
    compare_with_ultralytics,
    rle_mask,
    toy_truth,
)
from tests.scenes import bright_box_scene
from tsvision.serving.drawing import box_colour
from tsvision.serving.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_served(served, instance_toys, mrcnn, yolo_seg):
    """Every archive of this family on the run's TorchServe: the toys in both formats and backends
    (RLE; the YOLO-seg ONNX toy archived with polygons) on 333×777 and 1280×720, and per-request
    ``mask_format`` and the picture on the Mask R-CNN toy; Mask R-CNN (ONNX; its TorchScript file is
    checked in-process) against its model file called directly (one torch thread on both sides:
    near-tied random scores must not depend on the thread count); YOLOv8n-seg against
    ultralytics' predictor."""
    toys = instance_toys
    archives = {}
    toy_names = []
    for fmt, extra in TOY_SETTINGS.items():
        overrides = [f"--set={k}={json.dumps(v)}" for k, v in {"detection_format": fmt, **extra}.items()]
        for backend, filename in BACKENDS.items():
            mask_format = "polygon" if (fmt, backend) == ("yolov8_seg", "onnx") else "rle"
            name = f"toy_{fmt}_{backend}_{mask_format}"
            archives[name] = ["--model", str(toys / fmt / filename), "--task", "instance_segmentation",
                              "--labels", str(toys / fmt / "labels.json"), f"--set=mask_format={mask_format}",
                              *overrides]
            toy_names.append((name, fmt, mask_format))
    folder = mrcnn[0]
    archives["mrcnn_onnx"] = ["--model", str(folder / "model.onnx"), "--settings", str(folder / "settings.json"),
                              "--set", "threads=1"]
    archives["yolov8n_seg"] = ["--model", str(yolo_seg / "model.onnx"), "--settings", str(yolo_seg / "settings.json")]
    yolo_settings = Settings.from_mapping(json.loads((yolo_seg / "settings.json").read_text()))
    settings = json.loads((folder / "settings.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with registered(served, archives):
            for name, fmt, mask_format in toy_names:
                for width, height in SCENES:
                    response = served.predict(name, png(bright_box_scene(width, height)[0]), content_type="image/png")
                    assert response.status_code == 200, response.text
                    agreement = check_toy_answer(response.json(), fmt, width, height, mask_format)
                    print(f"\nserved {name} {width}x{height}: mask agreement {agreement:.5f}")
                    assert agreement >= 0.99
            compare_with_mask_rcnn_file(lambda image: answer_of(served, "mrcnn_onnx", image), folder, "onnx",
                                        settings, "served mrcnn_onnx")
            compare_with_ultralytics(lambda image: answer_of(served, "yolov8n_seg", image), yolo_seg, yolo_settings,
                                     "served yolov8n_seg")
            bad = served.predict("mrcnn_onnx", b"not an image", content_type="image/png")
            assert bad.status_code == 400, bad.text
            check_served_options_and_picture(served, "toy_torchvision_onnx_rle")
    finally:
        torch.set_num_threads(threads)


def answer_of(server, name: str, image: Image.Image) -> list:
    """The served answer to ``image`` as PNG; anything but a 200 fails."""
    response = server.predict(name, png(image), content_type="image/png")
    assert response.status_code == 200, response.text
    return response.json()


def check_served_options_and_picture(server, name: str) -> None:
    """``mask_format`` per request (JSON body) decodes to the archive's RLE answer's mask; a bad one is
    a 400 naming the option; ``Accept: image/png`` gets the picture with the mask tinted."""
    import requests

    image, truth, _ = toy_truth("torchvision", 333, 777)
    data = png(image)
    url = f"{server.inference_url}/predictions/{name}"

    def post(body=None, headers=None):
        return requests.post(url, json={"data": base64.b64encode(data).decode("ascii"), **(body or {})},
                             headers={**server.headers("inference"), **(headers or {})}, timeout=120)

    default = post().json()
    assert np.array_equal(rle_mask(default[0]["mask"]), truth)
    for mask_format in ("png", "polygon"):
        answer = post({"mask_format": mask_format}).json()
        assert check_toy_answer(answer, "torchvision", 333, 777, mask_format) == 1.0
        assert [a["box"] for a in answer] == [d["box"] for d in default]
    assert post({"classes": [0]}).json() == []  # only class 0 wanted: the toy finds class 1
    bad = post({"mask_format": "bmp"})
    assert bad.status_code == 400 and "'mask_format'" in bad.json()["message"] and "rle" in bad.json()["message"]
    drawn = post(headers={"Accept": "image/png"})
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(drawn.content)).convert("RGB")).astype(np.float64)
    assert pixels.shape == (777, 333, 3)
    ys, xs = np.nonzero(truth)
    y, x = int(np.median(ys)), int(np.median(xs))
    photo = np.asarray(image.convert("RGB"), dtype=np.float64)
    expected = np.round(0.55 * photo[y, x] + 0.45 * np.asarray(box_colour(1)))
    assert np.abs(pixels[y, x] - expected).max() <= 1

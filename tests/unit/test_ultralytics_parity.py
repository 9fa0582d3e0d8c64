"""The YOLO formats against ultralytics' own reference code (skipped without ``ultralytics``):
``LetterBox`` for the ``letterbox_center`` geometry and pixels, ``non_max_suppression`` + ``scale_boxes``
for the ``yolov8`` decoding, NMS and mapping back, on the same raw model output."""

from __future__ import annotations

import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")
torch = pytest.importorskip("torch")

from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.utils import ops  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402

from tests.scenes import OBJECT_PHOTOS, PERSON_PHOTOS, sized_photos  # noqa: E402
from tsvision.serving.geometry import YOLO_FILL, fit_square, mean_fill  # noqa: E402
from tsvision.serving.settings import Settings  # noqa: E402
from tsvision.serving.tasks.detection import DetectionTask  # noqa: E402

SIZES = [(333, 777), (777, 333), (1280, 720), (640, 480), (41, 333), (640, 640)]


def photos_of_many_sizes() -> dict:
    """Real photos that need shrinking, enlarging and no resize at all: scikit-image's at their own
    sizes, resized to ``SIZES``, and the parity photos of tests/scenes.py."""
    chelsea = Image.fromarray(skimage.data.chelsea())
    chosen = {f"{name} own size": Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket")}
    chosen.update({f"chelsea {w}x{h}": chelsea.resize((w, h), Image.BILINEAR) for w, h in SIZES})
    chosen.update(sized_photos(OBJECT_PHOTOS))
    chosen.update({f"persons {k}": v for k, v in sized_photos(PERSON_PHOTOS).items()})
    return chosen


def test_letterbox_center_is_ultralytics_letterbox_pixel_for_pixel():
    """The model input tsvision builds equals ultralytics' ``LetterBox`` (what ``predict(rect=False)``
    runs, on its BGR array) in every pixel: the same size and offsets, and OpenCV's resize."""
    letterbox = LetterBox(new_shape=(640, 640), auto=False, scale_fill=False, scaleup=True, center=True)
    for name, image in photos_of_many_sizes().items():
        theirs = letterbox(image=np.ascontiguousarray(np.asarray(image)[..., ::-1]))[..., ::-1]
        ours, _ = fit_square(image, 640, "letterbox_center", YOLO_FILL)
        assert ours.shape == theirs.shape == (640, 640, 3), name
        assert np.array_equal(ours, theirs), (name, int(np.abs(ours.astype(int) - theirs).max()),
                                              int((ours != theirs).sum()))


def test_torchvision_families_keep_the_antialiased_resize():
    """``stretch`` and ``letterbox`` with the default ``interpolation: bilinear`` (segmentation, detection
    archives made before SSD exports wrote ``bilinear_float``) still resize with PIL's antialiased
    bilinear filter, which differs from OpenCV's when shrinking."""
    import cv2

    image = Image.fromarray(skimage.data.coffee())  # 600×400
    stretched, _ = fit_square(image, 320, "stretch", (0, 0, 0))
    assert np.array_equal(stretched, np.asarray(image.resize((320, 320), Image.BILINEAR)))
    boxed, _ = fit_square(image, 320, "letterbox", mean_fill((0.5, 0.5, 0.5)))
    pil = np.asarray(image.resize((320, 213), Image.BILINEAR))
    assert np.array_equal(boxed[:213], pil) and (boxed[213:] == 128).all()
    assert not np.array_equal(pil, cv2.resize(np.asarray(image), (320, 213), interpolation=cv2.INTER_LINEAR))


def synthetic_yolov8_output(seed: int, classes: int = 80, anchors: int = 8400) -> np.ndarray:
    """1×(4+C)×A in the yolov8 layout: random boxes, a few hundred confident anchors with distinct scores."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((1, 4 + classes, anchors), np.float32)
    raw[0, 0:2] = rng.uniform(0, 640, (2, anchors))
    raw[0, 2:4] = rng.uniform(8, 320, (2, anchors))
    raw[0, 4:] = rng.uniform(0, 0.2, (classes, anchors))
    confident = rng.choice(anchors, 250, replace=False)  # fewer than max_det: NMS alone decides what stays
    raw[0, 4 + rng.integers(0, classes // 8, 250), confident] = rng.permutation(np.linspace(0.26, 0.99, 250))
    return raw


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("width, height", [(333, 777), (1280, 720)])
def test_yolov8_answers_equal_ultralytics_postprocessing(width, height, agnostic):
    raw = synthetic_yolov8_output(width + height)
    _, placement = fit_square(Image.new("RGB", (width, height)), 640, "letterbox_center", YOLO_FILL)
    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolov8", "agnostic_nms": agnostic,
                                      "max_detections": 300, "pre_nms_top_k": 30000})
    ours = DetectionTask(None, settings).finish([raw[0]], placement).to_json()

    theirs = non_max_suppression(torch.from_numpy(raw), conf_thres=settings.score_threshold,
                                 iou_thres=settings.iou_threshold, agnostic=agnostic, max_det=300)[0]
    theirs[:, :4] = ops.scale_boxes((640, 640), theirs[:, :4], (height, width))
    theirs = theirs.numpy()
    assert 20 < len(ours) == len(theirs) < 250
    assert [d["index"] for d in ours] == theirs[:, 5].astype(int).tolist()
    assert np.allclose([d["score"] for d in ours], theirs[:, 4], atol=1e-6)
    # tsvision rounds box coordinates to 2 decimals
    assert np.abs(np.array([d["box"] for d in ours]) - theirs[:, :4]).max() <= 1.0

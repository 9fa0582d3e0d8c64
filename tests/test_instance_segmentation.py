"""Instance segmentation (issue 15): the toys whose masks are known to the pixel, Mask R-CNN against
the archived model file called directly, YOLOv8n-seg against ultralytics' predictor, mixed-size
batches, and one live TorchServe with every archive of this module.

References, never our own output: the toys' truth is the bright rectangle of ``tests/scenes.py``;
Mask R-CNN's is the archived ``model.pt``/``model.onnx`` called directly on the same decoded
image; YOLOv8n-seg's is ``YOLO(model.onnx, task="segment").predict(..., rect=False,
retina_masks=True)``; every mask is decoded by pycocotools. Figures print with ``-s``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tests.instance_toys import TOY_INSTANCE_LABELS, YOLO_BOX_PAD, BrightMaskRCNN, BrightMaskYoloSeg
from tests.scenes import OBJECT_PHOTOS, bright_box_scene, sized_photos
from tsvision.serving.drawing import box_colour
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task, load_export
from tsvision.serving.tasks.instance_segmentation import TorchvisionInstanceSegmentationTask, YoloInstanceSegmentationTask
from tsvision.serving.tasks.torchvision_detection import to_chw_float
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.export.model_files import export_files, write_settings
from tsvision.tools.export.mask_rcnn import OUTPUT_NAMES
from tsvision.tools.export.torchvision_detectors import export_detector_onnx

coco = pytest.importorskip("pycocotools.mask")
os.environ.setdefault("YOLO_OFFLINE", "1")

BACKENDS = {"torchscript": "model.pt", "onnx": "model.onnx"}
SCENES = [(333, 777), (1280, 720)]  # width × height
TOY_SETTINGS = {"torchvision": {"background_index": 0, "score_threshold": 0.5}, "yolov8_seg": {"score_threshold": 0.5}}
PHOTOS = ("astronaut", "coffee", "camera")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rle_mask(rle: dict) -> np.ndarray:
    """pycocotools' decoding of an answer's mask (the reference decoder)."""
    return coco.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def polygon_mask(rings: list, height: int, width: int) -> np.ndarray:
    return coco.decode(coco.merge(coco.frPyObjects(rings, height, width))).astype(bool) if rings else np.zeros((height, width), bool)


# -- the toys ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> Path:
    """The Mask R-CNN-contract toy scripted and exported to one-image ONNX by the detectors' export
    code, the YOLOv8-seg-contract toy traced and exported to ONNX by ``export_files``."""
    root = tmp_path_factory.mktemp("instance_toys")
    (root / "torchvision").mkdir()
    toy = BrightMaskRCNN().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(toy).save(str(root / "torchvision" / "model.pt"))
    export_detector_onnx(toy, root / "torchvision" / "model.onnx", 320, 480, tuple(OUTPUT_NAMES))
    yolo = Exportable("instance_segmentation", "toy-yolov8_seg", BrightMaskYoloSeg(640).eval(), {"input_size": 640},
                      TOY_INSTANCE_LABELS, False, ["output0", "protos"])
    assert export_files(yolo, root / "yolov8_seg")["ok"]
    for fmt in TOY_SETTINGS:
        (root / fmt / "labels.json").write_text(json.dumps(TOY_INSTANCE_LABELS))
    return root


def toy_task(root: Path, fmt: str, backend: str, **overrides):
    values = {"task": "instance_segmentation", "detection_format": fmt, "labels": "labels.json", **TOY_SETTINGS[fmt], **overrides}
    return build_task(root / fmt / BACKENDS[backend], Settings.from_mapping(values), root / fmt)


def toy_truth(fmt: str, width: int, height: int):
    """The true mask (the bright rectangle) and the box the toy must answer: the rectangle, or for
    the yolov8_seg toy the rectangle grown by YOLO_BOX_PAD model-input pixels (clipped)."""
    image, (x1, y1, x2, y2) = bright_box_scene(width, height)
    mask = np.zeros((height, width), bool)
    mask[int(y1):int(y2), int(x1):int(x2)] = True
    box = [x1, y1, x2, y2]
    if fmt == "yolov8_seg":
        pad = YOLO_BOX_PAD * max(width, height) / 640
        box = [max(0.0, x1 - pad), max(0.0, y1 - pad), min(width, x2 + pad), min(height, y2 + pad)]
    return image, mask, box


def check_toy_answer(answer: list, fmt: str, width: int, height: int, mask_format: str = "rle") -> float:
    """One instance, label 1, its box within 1 px; returns the mask's agreement with the truth."""
    _, truth, box = toy_truth(fmt, width, height)
    assert len(answer) == 1, answer
    found = answer[0]
    assert set(found) == {"label", "index", "score", "box", "mask"}
    assert found["label"] == "bright rectangle" and found["index"] == 1 and found["score"] > 0.9
    assert np.abs(np.subtract(found["box"], box)).max() <= 1.0, (found["box"], box)
    if mask_format == "rle":
        assert found["mask"]["size"] == [height, width]
        mask = rle_mask(found["mask"])
    elif mask_format == "png":
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(found["mask"]))).convert("L")) > 127
    else:
        mask = polygon_mask(found["mask"], height, width)
    return float((mask == truth).mean())


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fmt", list(TOY_SETTINGS))
def test_toy_masks_are_known_to_the_pixel(toys, fmt, backend):
    task = toy_task(toys, fmt, backend)
    expected = TorchvisionInstanceSegmentationTask if fmt == "torchvision" else YoloInstanceSegmentationTask
    assert isinstance(task, expected)
    polygon_task = toy_task(toys, fmt, backend, mask_format="polygon")
    png_task = toy_task(toys, fmt, backend, mask_format="png")
    for width, height in SCENES:
        image = bright_box_scene(width, height)[0]
        rle_agreement = check_toy_answer(task.run([png(image)])[0], fmt, width, height)
        polygon_agreement = check_toy_answer(polygon_task.run([png(image)])[0], fmt, width, height, "polygon")
        png_agreement = check_toy_answer(png_task.run([png(image)])[0], fmt, width, height, "png")
        print(f"\n{fmt} {backend} {width}x{height}: mask agreement RLE {rle_agreement:.5f}, polygon {polygon_agreement:.5f}")
        assert rle_agreement >= 0.99 and polygon_agreement >= 0.99
        assert png_agreement == rle_agreement  # the same mask, written another way
        if fmt == "torchvision":  # the model's own mask at the original size: nothing to map, so exact
            assert rle_agreement == polygon_agreement == 1.0
    for each in (task, polygon_task, png_task):
        each.close()


@pytest.mark.parametrize("mask_format", ["rle", "polygon", "png"])
def test_toy_picture_tints_the_mask_in_the_class_colour(toys, mask_format):
    """The picture (``Accept: image/png``) at the original size: inside the true mask, away from the
    box outline and label, each pixel is the photo blended 0.45 with class 1's colour; far from the
    box the photo is untouched."""
    task = toy_task(toys, "torchvision", "onnx", mask_format=mask_format)
    image, truth, box = toy_truth("torchvision", 333, 777)
    answer = task.run([png(image)])[0]
    picture = np.asarray(task.draw(image, answer)).astype(np.float64)
    photo = np.asarray(image.convert("RGB")).astype(np.float64)
    assert picture.shape == photo.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    margin = 40  # the outline and the label inside the top of the box
    inside = np.zeros_like(truth)
    inside[y1 + margin:y2 - 8, x1 + 8:x2 - 8] = True
    assert inside.sum() > 1000
    expected = np.round(0.55 * photo + 0.45 * np.asarray(box_colour(1), dtype=np.float64))
    assert np.abs(picture[inside] - expected[inside]).max() <= 1
    far = np.ones_like(truth)
    far[max(0, y1 - 60):y2 + 20, max(0, x1 - 20):x2 + 200] = False
    assert np.array_equal(picture[far], photo[far])
    task.close()


@pytest.mark.parametrize("fmt", list(TOY_SETTINGS))
def test_toy_mixed_sizes_in_one_batch_equal_one_by_one(toys, fmt):
    task = toy_task(toys, fmt, "onnx")
    data = [png(bright_box_scene(w, h)[0]) for w, h in SCENES + [(777, 333), (41, 333)]]
    batched = task.run(data + [b"not an image"])
    assert batched[:-1] == [task.run([item])[0] for item in data]
    assert getattr(batched[-1], "status", None) == 400


def test_mask_threshold_and_settings(toys):
    """The toy's soft mask is sigmoid(40 (b - 0.5)): at mask_threshold 0.999 the rectangle's pixels
    (b = 0.98, 0.99999999) stay in and nothing else comes in; settings are checked."""
    task = toy_task(toys, "torchvision", "torchscript", mask_threshold=0.999, max_detections=1)
    image, truth, _ = toy_truth("torchvision", 333, 777)
    answer = task.run([png(image)])[0]
    assert len(answer) == 1 and np.array_equal(rle_mask(answer[0]["mask"]), truth)
    with pytest.raises(ValueError, match="mask_threshold must lie between 0 and 1"):
        Settings.from_mapping({"task": "instance_segmentation", "detection_format": "torchvision", "mask_threshold": 1.0})
    with pytest.raises(ValueError, match="instance_segmentation serves detection_format"):
        toy_task(toys, "torchvision", "onnx", detection_format="yolov8", background_index=None)


# -- Mask R-CNN ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos():
    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}


@pytest.fixture(scope="module")
def mrcnn(tmp_path_factory):
    """The default instance segmentation export: the smallest Mask R-CNN, random conditioned weights."""
    folder = tmp_path_factory.mktemp("mrcnn")
    exportable = build_exportable("instance_segmentation")
    write_settings(exportable, folder, {})
    report = export_files(exportable, folder)
    return folder, exportable, report


def direct_mask_rcnn(folder: Path, backend: str, image: Image.Image) -> dict:
    """The archived model file called directly on the decoded image: boxes, labels, scores, masks."""
    array = to_chw_float(np.asarray(image))
    if backend == "torchscript":
        module = torch.jit.load(str(folder / "model.pt")).eval()
        with torch.no_grad():
            _, found = module([torch.from_numpy(array)])
        return {k: v.numpy() for k, v in found[0].items()}
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(OUTPUT_NAMES, {"images": array})))


def expected_instances(found: dict, settings: dict, size) -> list:
    """What the answer must be, from the raw outputs: threshold, background, best first, the cap,
    boxes clipped; masks above mask_threshold."""
    width, height = size
    order = [i for i in np.argsort(-found["scores"], kind="stable")
             if found["scores"][i] > settings["score_threshold"] and found["labels"][i] != settings["background_index"]]
    return [{"index": int(found["labels"][i]), "score": float(found["scores"][i]),
             "box": np.clip(found["boxes"][i], 0, [width, height, width, height]),
             "mask": found["masks"][i, 0] > settings["mask_threshold"]} for i in order[: settings["max_detections"]]]


def compare_instances(answer: list, expected: list) -> dict:
    """Same labels in the same order; the largest box/score difference and the worst mask agreement."""
    assert [d["index"] for d in answer] == [e["index"] for e in expected], (answer, expected)
    figures = {"instances": len(answer), "box_px": 0.0, "score": 0.0, "mask_agreement": 1.0}
    for found, wanted in zip(answer, expected):
        figures["box_px"] = max(figures["box_px"], float(np.abs(np.subtract(found["box"], wanted["box"])).max()))
        figures["score"] = max(figures["score"], abs(found["score"] - wanted["score"]))
        figures["mask_agreement"] = min(figures["mask_agreement"], float((rle_mask(found["mask"]) == wanted["mask"]).mean()))
    return figures


def assert_close(figures: dict) -> None:
    assert figures["box_px"] <= 1.0 and figures["score"] <= 1e-3 and figures["mask_agreement"] >= 0.995, figures


def assert_yolo_parity(figures: dict) -> None:
    """Issue 24's parity with ultralytics' predictor (same classes in order: ``compare_instances``)."""
    assert figures["box_px"] <= 0.01 and figures["score"] <= 1e-4 and figures["mask_agreement"] >= 0.999, figures


def test_mask_rcnn_export_report(mrcnn):
    folder, exportable, report = mrcnn
    print("\nexport report:", json.dumps({k: report[k] for k in ("architecture", "files", "outputs", "parameters", "flops_per_image",
                                                                 "parity_detections", "max_abs_diff", "torchscript_seconds", "onnx_seconds")}))
    assert report["ok"] and report["files"] == ["model.pt", "model.onnx"] and report["outputs"] == OUTPUT_NAMES
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["task"] == "instance_segmentation" and settings["detection_format"] == "torchvision"
    assert settings["random_weights"] and settings["background_index"] == 0 and settings["mask_format"] is None  # None: the task's default, RLE
    assert json.loads((folder / "labels.json").read_text())[1] == "person"


@pytest.fixture(scope="module")
def mrcnn_tasks(mrcnn):
    loaded = {backend: load_export(mrcnn[0], filename, threads=1) for backend, filename in BACKENDS.items()}
    yield loaded
    for task in loaded.values():
        task.close()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_mask_rcnn_task_equals_archived_model(mrcnn, mrcnn_tasks, photos, backend):
    folder = mrcnn[0]
    task = mrcnn_tasks[backend]
    settings = task.settings.to_mapping()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found_any = 0
        for name, image in photos.items():
            answer = task.run([png(image)])[0]
            figures = compare_instances(answer, expected_instances(direct_mask_rcnn(folder, backend, image), settings, image.size))
            print(f"\n{backend} {name} {image.size}: {figures}")
            assert_close(figures)
            found_any += len(answer)
        assert found_any, "the conditioned Mask R-CNN should find instances on some photo"
    finally:
        torch.set_num_threads(threads)


def test_mask_rcnn_mixed_sizes_equal_one_by_one(mrcnn_tasks, photos):
    task = mrcnn_tasks["torchscript"]
    bodies = [png(image) for image in photos.values()] + [png(photos["coffee"].resize((300, 200)))]
    assert task.run(bodies) == [task.run([body])[0] for body in bodies]


def test_measured_scripted_vs_eager(mrcnn, mrcnn_tasks, photos):
    """Measured, not hidden: the eager model against the scripted file (and ONNX against scripted) on
    each photo: instances matched in order, largest box/score difference, worst mask agreement."""
    folder, exportable, _ = mrcnn
    eager = exportable.module.eval()
    settings = mrcnn_tasks["torchscript"].settings.to_mapping()
    figures = {}
    for name, image in photos.items():
        tensor = torch.from_numpy(to_chw_float(np.asarray(image)))
        with torch.no_grad():
            found = {k: v.numpy() for k, v in eager([tensor])[0].items()}
            sizes = (list(eager.transform([tensor])[0].image_sizes[0]),)
        scripted = mrcnn_tasks["torchscript"].run([png(image)])[0]
        onnx = mrcnn_tasks["onnx"].run([png(image)])[0]
        row = {"size": [image.height, image.width], "eager_resized": sizes[0]}
        for label, a, b in (("scripted_vs_eager", scripted, expected_instances(found, settings, image.size)),
                            ("onnx_vs_scripted", onnx, [{**d, "mask": rle_mask(d["mask"])} for d in scripted])):
            try:
                row[label] = compare_instances(a, b)
            except AssertionError:
                row[label] = f"different instances: {len(a)} vs {len(b)}"
        figures[name] = row
    print("\nmeasured:", json.dumps(figures, indent=1))
    # square photos resize identically in both (docs/models.md): there scripted equals eager
    for name in ("astronaut", "camera"):
        assert_close(figures[name]["scripted_vs_eager"])


# -- YOLOv8n-seg ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yolo_seg(tmp_path_factory) -> Path:
    from tsvision.tools.export.ultralytics_models import export_yolo

    folder = tmp_path_factory.mktemp("yolov8n_seg")
    report = export_yolo("yolov8n-seg", folder)
    print("\nyolov8n-seg export:", json.dumps({k: report[k] for k in ("outputs", "parameters", "max_abs_diff", "export_seconds")}))
    assert report["ok"] and report["task"] == "instance_segmentation" and report["detection_format"] == "yolov8_seg"
    return folder


def yolo_photos() -> dict:
    """Photos whose longer side is 640 (the model's input): no resize on either side."""
    chosen = {}
    for name in ("astronaut", "camera", "coffee", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        scale = 640 / max(image.size)
        chosen[name] = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    chosen["astronaut_wide"] = chosen["astronaut"].crop((0, 100, 640, 500))
    return chosen


def ultralytics_answer(folder: Path, image: Image.Image, settings: Settings) -> list:
    """ultralytics' predictor on the same ONNX file: square 640 letterbox (rect=False: otherwise a
    dynamic ONNX model gets the smallest stride-32 rectangle), masks at the original size
    (retina_masks=True), the same thresholds and cap."""
    from ultralytics import YOLO

    model = YOLO(str(folder / "model.onnx"), task="segment")
    result = model.predict(image, imgsz=settings.input_size, conf=settings.score_threshold, iou=settings.iou_threshold,
                           max_det=settings.max_detections, rect=False, retina_masks=True, verbose=False)[0]
    if result.masks is None:
        return []
    return [{"index": int(c), "score": float(s), "box": b, "mask": m.astype(bool)}
            for c, s, b, m in zip(result.boxes.cls.numpy(), result.boxes.conf.numpy(), result.boxes.xyxy.numpy(),
                                  result.masks.data.numpy())]


def test_yolo_seg_equals_ultralytics_predictor(yolo_seg):
    """Photos with a 640 longer side and, resampled by both sides (OpenCV's resize, as ultralytics'
    LetterBox), real photos at 1280×720, 333×777 and 900×420."""
    task = load_export(yolo_seg)
    assert isinstance(task, YoloInstanceSegmentationTask)
    total = 0
    for name, image in {**yolo_photos(), **sized_photos(OBJECT_PHOTOS)}.items():
        answer = task.run([png(image)])[0]
        figures = compare_instances(answer, ultralytics_answer(yolo_seg, image, task.settings))
        print(f"\nyolov8n-seg {name} {image.size}: {figures}")
        assert_yolo_parity(figures)
        assert answer or image.size not in OBJECT_PHOTOS, f"no instance on {name}: the comparison would be empty"
        total += len(answer)
    assert total >= 3, "the conditioned YOLOv8n-seg should find instances on the photos"
    task.close()


def test_yolo_seg_mixed_sizes_equal_one_by_one(yolo_seg):
    task = load_export(yolo_seg)
    bodies = [png(image) for image in yolo_photos().values()]
    assert task.run(bodies) == [task.run([body])[0] for body in bodies]
    task.close()


# -- one live TorchServe ---------------------------------------------------------------------------
@pytest.mark.e2e
def test_served(toys, mrcnn, yolo_seg, photos, tmp_path):
    """Every archive of this module in one TorchServe: the toys in both formats and backends (RLE;
    the YOLO-seg ONNX toy archived with polygons) on 333×777 and 1280×720, and per-request
    ``mask_format`` and the picture on the Mask R-CNN toy; Mask R-CNN (ONNX; its TorchScript file is
    checked in-process) against its model file called directly (one torch thread on both sides:
    near-tied random scores must not depend on the thread count); YOLOv8n-seg against
    ultralytics' predictor."""
    from tsvision.tools.archive.cli import main as archive_main
    from tsvision.tools.serve.server import TorchServe

    store = tmp_path / "store"
    toy_names = []
    for fmt, extra in TOY_SETTINGS.items():
        overrides = [f"--set={k}={json.dumps(v)}" for k, v in {"detection_format": fmt, **extra}.items()]
        for backend, filename in BACKENDS.items():
            mask_format = "polygon" if (fmt, backend) == ("yolov8_seg", "onnx") else "rle"
            name = f"toy_{fmt}_{backend}_{mask_format}"
            assert archive_main(["--model", str(toys / fmt / filename), "--task", "instance_segmentation",
                                 "--labels", str(toys / fmt / "labels.json"), "--name", name, "--store", str(store),
                                 f"--set=mask_format={mask_format}", *overrides]) == 0
            toy_names.append((name, fmt, mask_format))
    folder = mrcnn[0]
    assert archive_main(["--model", str(folder / "model.onnx"), "--settings", str(folder / "settings.json"),
                         "--name", "mrcnn_onnx", "--store", str(store), "--set", "threads=1"]) == 0
    assert archive_main(["--model", str(yolo_seg / "model.onnx"), "--settings", str(yolo_seg / "settings.json"),
                         "--name", "yolov8n_seg", "--store", str(store)]) == 0
    yolo_settings = Settings.from_mapping(json.loads((yolo_seg / "settings.json").read_text()))
    settings = json.loads((folder / "settings.json").read_text())
    server = TorchServe(store, tmp_path / "torchserve")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        server.start(timeout=600)
        for name, fmt, mask_format in toy_names:
            for width, height in SCENES:
                response = server.predict(name, png(bright_box_scene(width, height)[0]), content_type="image/png")
                assert response.status_code == 200, response.text
                agreement = check_toy_answer(response.json(), fmt, width, height, mask_format)
                print(f"\nserved {name} {width}x{height}: mask agreement {agreement:.5f}")
                assert agreement >= 0.99
        for image_name, image in photos.items():
            response = server.predict("mrcnn_onnx", png(image), content_type="image/png")
            assert response.status_code == 200, response.text
            figures = compare_instances(response.json(), expected_instances(direct_mask_rcnn(folder, "onnx", image), settings, image.size))
            print(f"\nserved mrcnn_onnx {image_name}: {figures}")
            assert_close(figures)
        for image_name, image in {**yolo_photos(), **sized_photos(OBJECT_PHOTOS)}.items():
            response = server.predict("yolov8n_seg", png(image), content_type="image/png")
            assert response.status_code == 200, response.text
            figures = compare_instances(response.json(), ultralytics_answer(yolo_seg, image, yolo_settings))
            print(f"\nserved yolov8n_seg {image_name}: {figures}")
            assert_yolo_parity(figures)
        bad = server.predict("mrcnn_onnx", b"not an image", content_type="image/png")
        assert bad.status_code == 400, bad.text
        check_served_options_and_picture(server, "toy_torchvision_onnx_rle")
    finally:
        server.stop()
        torch.set_num_threads(threads)


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
    expected = np.round(0.55 * np.asarray(image.convert("RGB"), dtype=np.float64)[y, x] + 0.45 * np.asarray(box_colour(1)))
    assert np.abs(pixels[y, x] - expected).max() <= 1

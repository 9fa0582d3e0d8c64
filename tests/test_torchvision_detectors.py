"""Whole torchvision detectors (``detection_format: torchvision``): export, the task in-process, and
one live TorchServe.

The reference is always the archived model file itself, called directly on the same decoded
image: ``torch.jit.load`` for model.pt, an ONNX Runtime session for model.onnx. The eager model
is compared too, and the measured differences are printed (``-s``) and written down in
docs/models.md.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tests.checks import assert_same_detections, check_detection
from tsvision.serving.tasks import load_export
from tsvision.serving.tasks.torchvision_detection import TorchvisionDetectionTask, to_chw_float
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.export.model_files import export_files, write_settings

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
# torchvision's RetinaNet, resizing to 320 (its default 800 costs 460 GFLOPs an image on 2 cores)
RETINANET, RETINANET_ARGS = "retinanet_resnet50_fpn", {"min_size": 320, "max_size": 480}
BACKENDS = {"torchscript": "model.pt", "onnx": "model.onnx"}
PHOTOS = ("astronaut", "coffee")  # 512×512 and 400×600
SERVED_PHOTOS = ("astronaut", "coffee", "rocket")  # the random RetinaNet finds boxes on the rocket only


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos():
    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}


@pytest.fixture(scope="module")
def frcnn(tmp_path_factory):
    """The smallest Faster R-CNN, random conditioned weights, exported by the export code."""
    folder = tmp_path_factory.mktemp("frcnn")
    exportable = build_exportable("detection", ARCH)
    write_settings(exportable, folder, {})
    report = export_files(exportable, folder)
    return folder, exportable, report


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    """torchvision's RetinaNet at min_size 320, random conditioned weights, exported by the export code."""
    folder = tmp_path_factory.mktemp("retinanet")
    exportable = build_exportable("detection", RETINANET, model_args=RETINANET_ARGS)
    write_settings(exportable, folder, {})
    report = export_files(exportable, folder)
    assert report["ok"] and report["files"] == ["model.pt", "model.onnx"], report
    assert report["parity_detections"] >= 1, report
    return folder, exportable, report


@pytest.fixture(scope="module")
def tasks(frcnn):
    folder = frcnn[0]
    loaded = {backend: load_export(folder, filename) for backend, filename in BACKENDS.items()}
    yield loaded
    for task in loaded.values():
        task.close()


def answers_of(boxes, labels, scores, settings, labels_list, size):
    """What a detection answer must be, from raw model outputs (independent of the task's code)."""
    width, height = size
    rows = [(float(s), int(c), b) for b, c, s in zip(np.asarray(boxes), np.asarray(labels), np.asarray(scores))
            if s > settings["score_threshold"] and c != settings["background_index"]]
    rows.sort(key=lambda row: -row[0])
    return [{"label": labels_list[c], "index": c, "score": s,
             "box": [round(float(v), 2) for v in np.clip(b, 0, [width, height, width, height])]}
            for s, c, b in rows[: settings["max_detections"]]]


def direct(folder: Path, backend: str, image: Image.Image):
    """The archived model file called directly on the decoded image: boxes, labels, scores."""
    array = to_chw_float(np.asarray(image))
    if backend == "torchscript":
        module = torch.jit.load(str(folder / "model.pt")).eval()
        with torch.no_grad():
            _, found = module([torch.from_numpy(array)])
        return [found[0][k].numpy() for k in ("boxes", "labels", "scores")]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["boxes", "labels", "scores"], {"images": array})


def matched_difference(a: list, b: list):
    """(detections in a, in b, matched, largest box difference px, largest score difference) between
    two answers; a detection matches the nearest-box twin of the same class."""
    box_diff, score_diff, matched = 0.0, 0.0, 0
    for det in a:
        twins = [d for d in b if d["index"] == det["index"]]
        if not twins:
            continue
        twin = min(twins, key=lambda d: np.abs(np.subtract(d["box"], det["box"])).max())
        gap = float(np.abs(np.subtract(twin["box"], det["box"])).max())
        if gap <= 8:
            matched += 1
            box_diff, score_diff = max(box_diff, gap), max(score_diff, abs(twin["score"] - det["score"]))
    return len(a), len(b), matched, round(box_diff, 3), round(score_diff, 5)


def test_export_report_and_settings(frcnn):
    folder, exportable, report = frcnn
    print("\nexport report:", json.dumps({k: report[k] for k in ("files", "onnx_error", "parameters", "flops_per_image",
                                                                 "parity_detections", "max_abs_diff")}))
    assert report["ok"], report
    assert report["files"] == ["model.pt", "model.onnx"] and report["onnx_error"] is None
    assert report["parity_detections"] >= 1  # parity was checked on real detections, not on an empty answer
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["detection_format"] == "torchvision" and settings["background_index"] == 0
    assert settings["random_weights"] and settings["score_threshold"] == 0.15
    labels = json.loads((folder / "labels.json").read_text())
    assert len(labels) == 91 and labels[0] == "__background__" and labels[1] == "person"


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_archive_recognises_a_whole_detector(frcnn, backend, tmp_path, capsys):
    """A user's own scripted (or one-image ONNX) torchvision detector archived with just
    ``--task detection`` and its labels: the archive tool recognises the format."""
    import yaml
    import zipfile

    from tsvision.tools.archive.cli import main as archive_main

    folder = frcnn[0]
    assert archive_main(["--model", str(folder / BACKENDS[backend]), "--task", "detection", "--labels",
                         str(folder / "labels.json"), "--name", "mine", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "detection_format torchvision (a whole torchvision detector; background_index 0)" in out
    assert "fixed batch size" not in out  # one 3×H×W image per call: the 3 is channels, not a batch
    with zipfile.ZipFile(tmp_path / "mine.mar") as archive:
        handler = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
    assert handler["detection_format"] == "torchvision" and handler["background_index"] == 0


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_task_equals_archived_model(frcnn, tasks, photos, backend):
    folder, exportable, _ = frcnn
    task = tasks[backend]
    assert isinstance(task, TorchvisionDetectionTask)
    settings = task.settings.to_mapping()
    for name, image in photos.items():
        answer = task.run([png(image)])[0]
        expected = answers_of(*direct(folder, backend, image), settings, exportable.labels, image.size)
        print(f"\n{backend} {name} {image.size}: {len(answer)} detections, scores {[round(d['score'], 3) for d in answer]}")
        assert answer, f"{name}: the conditioned model should find a few boxes above {settings['score_threshold']}"
        check_detection(answer, *image.size, settings["score_threshold"])
        assert_same_detections(answer, expected)
        assert [d["index"] for d in answer] == [d["index"] for d in expected]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_mixed_size_batch_equals_one_by_one(tasks, photos, backend):
    task = tasks[backend]
    bodies = [png(image) for image in photos.values()]
    together = task.run(bodies + [b"not an image"])
    assert together[:2] == [task.run([body])[0] for body in bodies]  # exactly the same
    assert getattr(together[2], "status", None) == 400


def test_measured_scripted_vs_eager_and_onnx(frcnn, tasks, photos):
    """Measured, not hidden: the scripted transform resizes differently from the eager one (float32
    scale), so eager answers differ slightly; ONNX (traced resize) differs from both. And one
    scripted call with images of different sizes zero-pads them to a common size."""
    folder, exportable, _ = frcnn
    eager = exportable.module.eval()
    scripted = torch.jit.load(str(folder / "model.pt")).eval()
    settings = tasks["torchscript"].settings.to_mapping()
    figures = {}
    for name, image in photos.items():
        tensor = torch.from_numpy(to_chw_float(np.asarray(image)))
        with torch.no_grad():
            eager_size = list(eager.transform([tensor])[0].image_sizes[0])
            scripted_size = list(scripted.transform([tensor])[0].image_sizes[0])
            found = eager([tensor])[0]
        eager_answer = answers_of(*(found[k].numpy() for k in ("boxes", "labels", "scores")), settings, exportable.labels, image.size)
        ts_answer, onnx_answer = (tasks[b].run([png(image)])[0] for b in BACKENDS)
        figures[name] = {"size": [image.height, image.width], "eager_resized": eager_size, "scripted_resized": scripted_size,
                         "scripted_vs_eager": matched_difference(ts_answer, eager_answer),
                         "onnx_vs_scripted": matched_difference(onnx_answer, ts_answer)}
    # one scripted call with both images (torchvision pads them to one size) vs each alone
    arrays = [to_chw_float(np.asarray(image)) for image in photos.values()]
    runtime = tasks["torchscript"].runtime
    together, alone = runtime.run_images(arrays), [runtime.run_images([a])[0] for a in arrays]
    for name, both, one in zip(photos, together, alone):
        same = len(both[0]) == len(one[0]) and all(np.array_equal(x, y) for x, y in zip(both, one))
        n = min(len(both[2]), len(one[2]))
        figures[name]["one_call_mixed_equals_alone"] = same
        figures[name]["one_call_mixed_top_score_diff"] = float(np.abs(both[2][:n] - one[2][:n]).max()) if n else 0.0
    print("\nmeasured:", json.dumps(figures, indent=1))
    # what DESIGN.md measured: 400×600 -> 319×479 scripted, 320×480 eager
    assert figures["coffee"]["eager_resized"] == [320, 480] and figures["coffee"]["scripted_resized"] == [319, 479]
    assert figures["astronaut"]["eager_resized"] == figures["astronaut"]["scripted_resized"] == [320, 320]
    # a 512×512 photo resizes identically, so there scripted and eager agree exactly
    n_a, n_b, matched, box_diff, score_diff = figures["astronaut"]["scripted_vs_eager"]
    assert n_a == n_b == matched and box_diff <= 0.01 and score_diff <= 1e-4
    # at 400×600 the one-pixel resize difference changes the random model's whole answer (measured:
    # 17 scripted vs 8 eager detections, none matching), so eager is no reference for served answers
    n_a, n_b, matched, _, _ = figures["coffee"]["scripted_vs_eager"]
    assert matched < max(n_a, n_b)
    # ONNX (traced resize) stays close to the scripted model: every detection matched
    for name in PHOTOS:
        n_a, n_b, matched, box_diff, score_diff = figures[name]["onnx_vs_scripted"]
        assert n_a == n_b == matched and box_diff <= 1.0 and score_diff <= 0.01, (name, figures[name])
    # one call with both sizes pads the 320×320 astronaut to 320×480: its answer changes, which is
    # why the task calls the model per group of equally sized images
    assert not figures["astronaut"]["one_call_mixed_equals_alone"]


@pytest.mark.e2e
def test_served_equals_archived_model(frcnn, retinanet, tmp_path):
    """Served Faster R-CNN (TorchScript) and RetinaNet (ONNX) equal (1) the archived model file
    called directly on the same decoded image and (2) the task in-process. (Each detector on one
    backend: the runtimes are the in-process tests' own code, which check both backends; serving
    four of these models made this the suite's slowest test.)

    Both sides run torch with one intra-op thread: measured here, the random scripted Faster
    R-CNN answers coffee differently at 1 and 2 threads (its near-tied low scores reorder), so the
    comparison pins the thread count rather than depending on what the worker gets."""
    from tsvision.tools.archive.cli import main as archive_main
    from tsvision.tools.serve.server import TorchServe

    photos = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SERVED_PHOTOS}
    detectors = {"frcnn": frcnn, "retinanet": retinanet}
    store = tmp_path / "store"
    backend_of = {"frcnn": "torchscript", "retinanet": "onnx"}
    for name, (folder, _, _) in detectors.items():
        backend = backend_of[name]
        assert archive_main(["--model", str(folder / BACKENDS[backend]), "--settings", str(folder / "settings.json"),
                             "--name", f"{name}_{backend}", "--store", str(store), "--set", "threads=1"]) == 0
    threads = torch.get_num_threads()
    tasks = {(name, backend_of[name]): load_export(folder, BACKENDS[backend_of[name]], threads=1)
             for name, (folder, _, _) in detectors.items()}
    for archive in sorted(store.glob("*.mar")):
        print(f"\n{archive.name}: {archive.stat().st_size / 1e6:.1f} MB")
    server = TorchServe(store, tmp_path / "torchserve")
    found = {name: 0 for name in detectors}
    try:
        server.start(timeout=300)
        for (name, backend), task in tasks.items():
            folder, exportable, _ = detectors[name]
            settings = task.settings.to_mapping()
            for photo, image in photos.items():
                response = server.predict(f"{name}_{backend}", png(image), content_type="image/png")
                assert response.status_code == 200, response.text
                served = response.json()
                expected = answers_of(*direct(folder, backend, image), settings, exportable.labels, image.size)
                assert_same_detections(served, expected)
                assert [d["index"] for d in served] == [d["index"] for d in expected]
                in_process = task.run([png(image)])[0]
                assert_same_detections(served, in_process, box_tol=0.01, score_tol=1e-5)
                found[name] += len(served)
                print(f"{name} {backend} {photo}: {len(served)} detections, scores {[round(d['score'], 3) for d in served]}")
    finally:
        server.stop()
        for task in tasks.values():
            task.close()
        torch.set_num_threads(threads)
    assert all(found.values()), found  # the comparisons were not all between empty answers

"""The detect -> crop -> classify workflow in-process: its function nodes (examples/workflows/) on hand-built
node answers, and the .war builder (tsvision workflow). Served on TorchServe: tests/e2e/test_workflow.py."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

from examples.workflows import detect_crop_classify as nodes
from tsvision.tools.archive.workflow import EXAMPLE_SPEC, build_workflow
from tsvision.tools.archive.workflow_cli import main as workflow_main
from tsvision.tools.command import UsageError

DETECTIONS = [{"label": "cat", "index": 17, "score": 0.9, "box": [10.4, 5.0, 30.01, 25.99]},
              {"label": "dog", "index": 18, "score": 0.5, "box": [-3.2, 40.5, 12.0, 60.0]},
              {"label": "kite", "index": 38, "score": 0.3, "box": [63.7, 47.2, 70.0, 50.0]}]  # past the corner


def noise(width: int = 64, height: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def request_for(image_bytes: bytes) -> bytes:
    """What the start node answers for an image sent as raw bytes (the crop node's "request" input)."""
    return nodes.request([{"body": image_bytes}], None)[0].encode()


def decoded_crops(crop_answer: str) -> list:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(c)))) for c in json.loads(crop_answer)["instances"]]


def test_the_start_node_makes_the_detectors_request():
    raw = png_bytes(noise())
    assert json.loads(request_for(raw)) == {"data": base64.b64encode(raw).decode()}
    sent = {"data": "aGVsbG8=", "max_detections": 3}  # JSON (TorchServe parsed it already) passes as it is
    assert json.loads(nodes.request([{"body": sent}], None)[0]) == sent
    assert json.loads(nodes.request([{"body": json.dumps(sent).encode()}], None)[0]) == sent
    assert json.loads(nodes.request([{"body": "aGVsbG8="}], None)[0]) == {"data": "aGVsbG8="}  # base64 text


def test_crops_are_the_pixels_each_box_covers_in_the_detectors_order():
    image = noise()
    pixels = np.asarray(image)
    answer = nodes.crop([{"request": request_for(png_bytes(image)), "detector": json.dumps(DETECTIONS).encode()}],
                        None)[0]
    crops = decoded_crops(answer)
    # x1, y1 rounded down, x2, y2 up, inside the 64x48 image, at least one pixel
    expected = [pixels[5:26, 10:31], pixels[40:48, 0:12], pixels[47:48, 63:64]]
    assert len(crops) == 3
    for crop, truth in zip(crops, expected):
        assert crop.shape == truth.shape and np.array_equal(crop, truth)


def test_crops_follow_the_exif_orientation_as_the_boxes_do():
    image = noise(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: the detector saw (and boxed) a 20x40 image
    upright = np.asarray(image.transpose(Image.Transpose.ROTATE_270))
    assert upright.shape == (40, 20, 3)
    answer = nodes.crop([{"request": request_for(png_bytes(image, exif=exif)),
                          "detector": json.dumps([{"label": "a", "index": 0, "score": 1.0, "box": [2, 25, 18, 39]}])}],
                        None)[0]
    (crop,) = decoded_crops(answer)
    assert np.array_equal(crop, upright[25:39, 2:18])


@pytest.mark.parametrize("detector", [json.dumps([]), json.dumps({"code": 400, "type": "UnreadableImage",
                                                                  "message": "not an image"}), b"\x89PNG..."])
def test_no_crops_when_the_detector_found_nothing_or_failed(detector):
    answer = nodes.crop([{"request": b'{"data": "bm90IGFuIGltYWdl"}', "detector": detector}], None)[0]
    assert json.loads(answer) == {"instances": []}


def test_the_answer_is_each_detection_with_its_classification():
    classes = [[{"label": "tabby", "index": 281, "score": 0.7}], [{"label": "pug", "index": 254, "score": 0.6}],
               [{"label": "kite", "index": 21, "score": 0.2}]]
    answer = json.loads(nodes.combine([{"detector": json.dumps(DETECTIONS).encode(),
                                        "classifier": json.dumps({"predictions": classes}).encode()}], None)[0])
    assert answer == [{**d, "classification": c} for d, c in zip(DETECTIONS, classes)]


def test_errors_name_the_node_they_came_from():
    def combined(detector, classifier=b'{"code": 400, "type": "MissingImage", "message": "no image"}'):
        return json.loads(nodes.combine([{"detector": detector, "classifier": classifier}], None)[0])

    bad = {"code": 400, "type": "UnreadableImage", "message": "the data (12 bytes) is not an image"}
    assert combined(json.dumps(bad).encode()) == {**bad, "node": "detector"}
    assert combined(b"[]") == []  # nothing found: the classifier's refusal of no crops is not an error
    too_many = {"code": 413, "type": "TooManyImages", "message": "at most 64 per request"}
    assert combined(json.dumps(DETECTIONS).encode(), json.dumps(too_many).encode()) == {**too_many,
                                                                                         "node": "classifier"}
    picture = combined(b"\x89PNG\r\n\x1a\n....")  # the client's Accept: image/png reached the detector
    assert picture["code"] == 406 and picture["node"] == "detector" and "Accept" in picture["message"]
    several = combined(json.dumps({"predictions": [DETECTIONS]}).encode())  # {"instances": [...]} sent
    assert several["code"] == 400 and "one image per request" in several["message"]
    short = combined(json.dumps(DETECTIONS).encode(), json.dumps({"predictions": [[]]}).encode())
    assert short["code"] == 502 and short["node"] == "classifier" and "3 crops" in short["message"]


# -- the builder ---------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    for name in ("detection_onnx.mar", "classification_onnx.mar", "yolov8n_onnx.mar"):
        (folder / name).write_bytes(b"a model archive")
    return folder


def test_the_war_holds_the_spec_with_the_chosen_archives_and_the_handler(store, capsys):
    assert workflow_main(["--name", "dcc", "--store", str(store), "--model", "detector=yolov8n_onnx.mar"]) == 0
    assert "/wfpredict/dcc" in capsys.readouterr().out
    war = store / "dcc.war"
    with zipfile.ZipFile(war) as archive:
        manifest = json.loads(archive.read("WAR-INF/MANIFEST.json"))["workflow"]
        spec = yaml.safe_load(archive.read(manifest["specFile"]))
        handler = archive.read(manifest["handler"]).decode()
    assert manifest["workflowName"] == "dcc"
    assert spec["models"]["detector"]["url"] == "yolov8n_onnx.mar"
    assert spec["models"]["classifier"]["url"] == "classification_onnx.mar"
    assert spec["dag"] == yaml.safe_load(EXAMPLE_SPEC.read_text())["dag"]
    assert handler == EXAMPLE_SPEC.with_suffix(".py").read_text()
    assert (store / "dcc.war.sha256").read_text().split()[1] == "dcc.war"


def write_spec(path, dag, models=None):
    path.write_text(yaml.safe_dump({"models": models or {"detector": {"url": "detection_onnx.mar"}}, "dag": dag}))
    return path


@pytest.mark.parametrize("dag, words", [
    ({"request": ["detector"], "detector": ["resize"]}, ["resize", "neither a model node", "request, crop, combine"]),
    ({"request": ["detector"], "crop": ["detector"]}, ["exactly one start node", "crop, request"]),
    ({"request": ["detector"], "detector": ["crop"], "crop": ["detector"]}, ["cycle", "crop, detector"]),
])
def test_a_wrong_dag_is_said_before_anything_is_built(store, tmp_path, dag, words):
    with pytest.raises(UsageError) as error:
        build_workflow(write_spec(tmp_path / "spec.yaml", dag), EXAMPLE_SPEC.with_suffix(".py"), "w", store)
    for word in words:
        assert word in str(error.value), (word, str(error.value))
    assert not (store / "w.war").exists()


def test_archives_and_nodes_that_are_not_there(store, tmp_path, capsys):
    handler = str(EXAMPLE_SPEC.with_suffix(".py"))
    assert workflow_main(["--name", "w", "--store", str(store), "--model", "classifier=nope.mar"]) == 2
    assert "not in" in capsys.readouterr().err and not (store / "w.war").exists()
    assert workflow_main(["--name", "w", "--store", str(store), "--model", "segmenter=x.mar"]) == 2
    assert "no model node 'segmenter'" in capsys.readouterr().err
    assert workflow_main(["--name", "w", "--store", str(store), "--model", "detector"]) == 2
    assert "NODE=ARCHIVE" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("models: [1, 2]\n")
    assert workflow_main(["--name", "w", "--store", str(store), "--spec", str(tmp_path / "bad.yaml"),
                          "--handler", handler]) == 2
    assert "'models' and 'dag'" in capsys.readouterr().err
    assert workflow_main(["--name", "my flow", "--store", str(store)]) == 2
    assert "--name" in capsys.readouterr().err

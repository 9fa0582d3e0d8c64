"""An archive is self-contained: unpacked into an empty folder it imports and answers in a fresh
Python that may import only what a TorchServe host has (torch, torchvision, onnxruntime, pillow,
numpy, pyyaml, OpenCV (``cv2``: the YOLO formats' resize) and TorchServe itself), with ``tsvision``
coming from the archive, not this repo."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import skimage.data
from PIL import Image

from tests.helpers import png
from tsvision.tools.archive.cli import main as archive_main

WORKER = r'''
import importlib.util, inspect, json, sys
folder, image_path = sys.argv[1], sys.argv[2]
import torch, torchvision, onnxruntime, numpy, yaml, PIL.Image, cv2     # a TorchServe host's packages
import ts.context, ts.torch_handler.base_handler, ts.handler_utils.timer, ts.metrics.metric_cache_yaml_impl
host = {name.split(".")[0] for name in sys.modules}

class HostOnly:
    """Refuse every import a TorchServe host could not satisfy (this repo's tsvision included)."""
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in host or top in sys.stdlib_module_names or top in ("tsvision", "image_classifier"):
            return None
        raise ImportError(f"{name} is not installed on a TorchServe host")

sys.meta_path.insert(0, HostOnly())
sys.path.insert(0, folder)
spec = importlib.util.spec_from_file_location("image_classifier", folder + "/image_classifier.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
[handler_class] = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == "image_classifier"]
import tsvision
assert tsvision.__file__.startswith(folder), tsvision.__file__
config = yaml.safe_load(open(folder + "/model-config.yaml"))
manifest = json.load(open(folder + "/MAR-INF/MANIFEST.json"))
metrics = ts.metrics.metric_cache_yaml_impl.MetricsCacheYamlImpl(
    config_file_path=ts.__file__.rsplit("/", 1)[0] + "/configs/metrics.yaml")
metrics.initialize_cache()
context = ts.context.Context("isolated", folder, manifest, 1, None, ts.__version__, True, metrics, config)
handler = handler_class()
handler.initialize(context)
context.request_ids = {0: "a", 1: "b"}
metrics.request_ids = context.request_ids
context.request_processor = [ts.context.RequestProcessor({"body": {"content-type": "image/png"}}) for _ in range(2)]
bodies = handler.handle([{"body": open(image_path, "rb").read()}, {"body": b"not an image"}], context)
print(json.dumps({"statuses": [context.get_response_status(i)[0] for i in range(2)], "bodies": bodies,
                  "tools_loaded": sorted(m for m in sys.modules if m.startswith("tsvision.tools"))}))
'''


def test_an_unpacked_archive_answers_with_only_a_torchserve_hosts_packages(exports, tmp_path):
    assert archive_main(["--model", str(exports / "classification" / "model.onnx"), "--settings",
                         str(exports / "classification" / "settings.json"), "--name", "isolated", "--store", str(tmp_path)]) == 0
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(tmp_path / "isolated.mar") as archive:
        archive.extractall(folder)
    image = tmp_path / "chelsea.png"
    image.write_bytes(png(Image.fromarray(skimage.data.chelsea())))
    result = subprocess.run([sys.executable, "-I", "-c", WORKER, str(folder), str(image)], cwd=folder,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["statuses"] == [200, 400] and answer["tools_loaded"] == []
    top5, error = (json.loads(body) for body in answer["bodies"])
    labels = json.loads((folder / "labels.json").read_text())
    assert len(top5) == 5 and all(entry["label"] == labels[entry["index"]] for entry in top5)
    assert error["type"] == "UnreadableImage"

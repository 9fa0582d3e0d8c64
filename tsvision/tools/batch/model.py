"""The callable class Ray Data's ``map_batches`` runs on each model actor: an archive unpacked once per
actor, its own handler run through ``LocalWorker`` (TorchServe's real ``Context`` and ``handle``).

A row's answer is what the served archive answers for the same bytes: the handler named in the archive's
MANIFEST (ours, or a user's own file), its ``model-config.yaml``, and the archive's own copy of
``tsvision.serving`` when this process has not imported another one yet (a Ray actor has not; a test calling
this class in-process keeps the repository's). Options set for the whole job travel as a request's form
fields do (``top_k=3``). An exception out of ``handle`` fails a whole batch in TorchServe (503); here the
batch's images are then answered one by one, so only the images that fail alone get a 503 row.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import weakref
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import yaml

from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class
from tsvision.tools.batch import rows as output

ArchiveSource = Union[str, Path, bytes, list]  # a .mar path, its bytes, or [ray.ObjectRef of its bytes]


class ArchiveError(ValueError):
    """The file is not a TorchServe archive this command can run."""


def unpack(source: ArchiveSource, folder: Path) -> Dict[str, Any]:
    """Extract the archive into ``folder``; its MANIFEST's ``model`` entry."""
    if isinstance(source, list):  # an object reference in a list, so Ray hands it over unresolved
        import ray  # only inside a Ray actor

        source = ray.get(source[0])
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with zipfile.ZipFile(opened) as archive:
            archive.extractall(folder)
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"not a .mar (zip) archive: {error}") from None
    manifest = folder / "MAR-INF" / "MANIFEST.json"
    if not manifest.is_file():
        raise ArchiveError("the archive has no MAR-INF/MANIFEST.json (not built by torch-model-archiver)")
    return json.loads(manifest.read_text())["model"]


def handler_file(folder: Path, handler: str) -> Path:
    """The handler file a MANIFEST names (``image_classifier.py``, or a module name beside the model)."""
    name = handler.split(":", 1)[0]
    for candidate in (folder / name, folder / f"{name}.py"):
        if candidate.is_file() and candidate.suffix == ".py":
            return candidate
    raise ArchiveError(f"the archive's handler {handler!r} is not a Python file inside it "
                       "(TorchServe's built-in handlers are not supported by tsvision batch)")


class ArchiveModel:
    """``map_batches`` callable class: batches of ``path``/``data``/``read_error`` -> output rows."""

    def __init__(self, archive: ArchiveSource, options: Optional[Mapping[str, Any]] = None,
                 gpu: Optional[int] = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tsvision-batch-"))
        weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        model = unpack(archive, self.folder)
        config_file = self.folder / model.get("configFile", "model-config.yaml")
        config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        self._prefer_archive_code()
        handler = load_handler_class(handler_file(self.folder, model["handler"]))
        self.worker = LocalWorker(handler, self.folder, model.get("serializedFile", ""), config or {},
                                  name=model.get("modelName", "model"), version=model.get("modelVersion", "1.0"),
                                  gpu=_gpu() if gpu is None else gpu)
        self.options = {key: _form_value(value) for key, value in (options or {}).items()}

    def _prefer_archive_code(self) -> None:
        """TorchServe puts the model folder first on the worker's path: the handler imports the archive's files."""
        sys.path.insert(0, str(self.folder))
        packaged = self.folder / "tsvision" / "serving"
        if packaged.is_dir() and "tsvision.serving" not in sys.modules:
            import tsvision

            tsvision.__path__.insert(0, str(packaged.parent))

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        read_errors = list(batch.get("read_error", [None] * len(paths)))
        results: List[Optional[Dict[str, Any]]] = [None] * len(paths)
        todo = []
        for index, (path, error) in enumerate(zip(paths, read_errors)):
            if isinstance(error, str) and error:  # Arrow's nulls may arrive as None or NaN
                kind, _, message = str(error).partition(": ")
                results[index] = output.failed(path, output.UNREAD, kind, message)
            else:
                todo.append(index)
        for index, result in zip(todo, self.answer([paths[i] for i in todo], [batch["data"][i] for i in todo])):
            results[index] = result
        return {name: np.array([r[name] for r in results], dtype=np.int64 if name == "status" else object)
                for name in output.FIELDS}

    def answer(self, paths: List[str], data: List[bytes]) -> List[Dict[str, Any]]:
        """The rows of one batch through the handler; one by one when the handler raises for the batch."""
        if not paths:
            return []
        requests = [{"body": bytes(body), **self.options} for body in data]
        headers = [{"body": {"content-type": output.content_type(path)}} for path in paths]
        try:
            responses = self.worker.predict(requests, headers)
        except Exception as error:  # noqa: BLE001 - TorchServe answers 503 for the whole batch
            if len(paths) > 1:
                return [row for i in range(len(paths)) for row in self.answer([paths[i]], [data[i]])]
            return [output.failed(paths[0], 503, type(error).__name__, str(error))]
        return [output.answered(path, response.status, response.body) for path, response in zip(paths, responses)]


def _form_value(value: Any) -> str:
    """An option as a form field carries it: text (lists and booleans as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def _gpu() -> Optional[int]:
    """The GPU Ray gave this actor (it sets CUDA_VISIBLE_DEVICES, so it is device 0 here), else None."""
    try:
        import ray  # only inside a Ray actor

        return 0 if ray.is_initialized() and ray.get_gpu_ids() else None
    except ImportError:
        return None


def check_archive(path: Path) -> Dict[str, Any]:
    """Before a job starts: ``path`` is a .mar whose MANIFEST names a handler file inside it (``ArchiveError``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "MAR-INF/MANIFEST.json" not in names:
                raise ArchiveError(f"{path}: no MAR-INF/MANIFEST.json (not built by torch-model-archiver)")
            model = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
    except zipfile.BadZipFile:
        raise ArchiveError(f"{path}: not a .mar (zip) archive") from None
    handler = str(model.get("handler", "")).split(":", 1)[0]
    if handler not in names and f"{handler}.py" not in names:
        raise ArchiveError(f"{path}: its handler {model.get('handler')!r} is not a Python file inside it "
                           "(TorchServe's built-in handlers are not supported by tsvision batch)")
    return model

"""A ``.mar`` unpacked into a folder, and its handler opened there as TorchServe would open it.

TorchServe unzips an archive into a folder of its own, reads ``MAR-INF/MANIFEST.json`` (the
handler file, the model file, the name and version) and the model-config file, and gives the
handler a ``Context`` over that folder. :func:`unpack` does the same, and
:meth:`UnpackedArchive.open_worker` runs the archive's handler through
:class:`~tsvision.tools.archive.local_worker.LocalWorker` (TorchServe's own ``Context``), so a host
other than TorchServe (``tsvision kserve``) answers exactly what the archive answers.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import yaml

from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class

MANIFEST = "MAR-INF/MANIFEST.json"


class ArchiveError(ValueError):
    """An archive that cannot be opened: not a zip, no manifest, a file the manifest names is missing."""


@dataclass
class UnpackedArchive:
    """What TorchServe reads from an archive before it starts a worker."""

    folder: Path
    name: str
    version: str
    handler: Path
    model_file: str
    config: Dict[str, Any] = field(default_factory=dict)  # model-config.yaml: batchSize, maxBatchDelay, handler:

    @property
    def batch_size(self) -> int:
        return int(self.config.get("batchSize", 1))

    @property
    def max_batch_delay_ms(self) -> float:
        return float(self.config.get("maxBatchDelay", 100))

    def open_worker(self) -> LocalWorker:
        """The archive's handler class, initialised over the unpacked folder (loads the model)."""
        return LocalWorker(load_handler_class(self.handler), self.folder, self.model_file, self.config,
                           name=self.name, version=self.version)


def unpack(archive: Path, into: Path) -> UnpackedArchive:
    """Unzip ``archive`` into the folder ``into`` (created) and read its manifest and model config."""
    try:
        with zipfile.ZipFile(archive) as mar:
            mar.extractall(into)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError(f"{archive}: not a readable .mar ({error})") from error
    manifest_path = into / MANIFEST
    if not manifest_path.is_file():
        raise ArchiveError(f"{archive.name} has no {MANIFEST}; build it with tsvision archive or torch-model-archiver")
    model = json.loads(manifest_path.read_text()).get("model", {})
    missing = [key for key in ("modelName", "handler", "serializedFile") if not model.get(key)]
    if missing:
        raise ArchiveError(f"{archive.name}: its manifest names no {', '.join(missing)}")
    for key in ("handler", "serializedFile"):
        if not (into / model[key]).is_file():
            raise ArchiveError(f"{archive.name}: the manifest's {key} {model[key]!r} is not in the archive")
    config_name = model.get("configFile")
    config = yaml.safe_load((into / config_name).read_text()) if config_name else {}
    return UnpackedArchive(into, model["modelName"], str(model.get("modelVersion", "1.0")), into / model["handler"],
                           model["serializedFile"], config or {})

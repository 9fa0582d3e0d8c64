"""Check a model before it is packed: two differently sized images in one batch through its handler, in-process
(``LocalWorker``: TorchServe's own context and ``handle``), so a model or handler that breaks the task's
contract fails here, not in a TorchServe worker."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from tsvision.serving.settings import Settings, load_labels
from tsvision.serving.tasks.base import LabelCountError
from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class
from tsvision.tools.archive.package import external_data_files


def check_model(model: Path, settings: Settings, handler: Path, labels: Optional[Path] = None,
                found: Optional[dict] = None, name: str = "model") -> object:
    """Serve two differently sized synthetic images in one batch through ``handler`` in-process (TorchServe's
    own context and ``handle``); return the first answer. A model or handler that breaks the contract fails here.
    ``found`` (a dict) receives what the check learnt about the model: ``fixed_batch``."""
    images = [np.linspace(0, 255, h * w * 3).reshape(h, w, 3).astype(np.uint8) for h, w in ((333, 777), (480, 640))]
    bodies = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    with tempfile.TemporaryDirectory(prefix="tsvision-check-") as folder:
        for file in [model, *external_data_files(model)]:
            (Path(folder) / file.name).symlink_to(file.resolve())
        values = settings.to_mapping()
        if labels is not None:
            (Path(folder) / "labels.json").write_text(json.dumps(load_labels(labels)))
            values["labels"] = "labels.json"
        try:
            worker = LocalWorker(load_handler_class(handler), Path(folder), model.name, {"batchSize": 2, "handler": values}, name=name)
            responses = worker.predict([{"body": b} for b in bodies], [{"body": {"content-type": "image/png"}}] * 2)
            if found is not None:
                found["fixed_batch"] = getattr(worker.handler.task.runtime, "fixed_batch", None)
            worker.handler.task.close()
        except LabelCountError as error:
            raise ValueError(error.describe(str(labels))) from None
        except Exception as error:
            raise ValueError(f"{model} with {handler.name} does not meet the {settings.task} contract (docs/models.md): "
                             f"{type(error).__name__}: {error}") from None
    for response in responses:
        if response.status != 200:
            raise ValueError(f"{model} with {handler.name} does not meet the {settings.task} contract (docs/models.md) on a "
                             f"batch of two images (333x777 and 640x480): {response.status} {response.body}")
    return responses[0].json()

"""Check a model before it is packed: two differently sized images in one batch through its handler, in-process
(``LocalWorker``: TorchServe's own context and ``handle``), so a model or handler that breaks the task's
contract fails here, not in a TorchServe worker."""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from tsvision.serving.settings import Settings, load_labels
from tsvision.serving.tasks.base import LabelCountError
from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class


@dataclass(frozen=True)
class CheckResult:
    answer: Any  # the first image's answer
    fixed_batch: Optional[int]  # the model's fixed batch size (exported without a dynamic batch axis), else None


def check_model(model: Path, settings: Settings, handler: Path, labels: Optional[Path] = None, name: str = "model",
                external_data: Sequence[Path] = ()) -> CheckResult:
    """Serve two differently sized synthetic images in one batch through ``handler`` in-process (TorchServe's
    own context and ``handle``). A model or handler that breaks the contract fails here (``ValueError``).
    ``external_data``: the ONNX model's weight files beside it."""
    images = [np.linspace(0, 255, h * w * 3).reshape(h, w, 3).astype(np.uint8) for h, w in ((333, 777), (480, 640))]
    bodies = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    with tempfile.TemporaryDirectory(prefix="tsvision-check-") as folder:
        for file in [model, *external_data]:
            (Path(folder) / file.name).symlink_to(file.resolve())
        values = settings.to_mapping()
        if labels is not None:
            (Path(folder) / "labels.json").write_text(json.dumps(load_labels(labels)))
            values["labels"] = "labels.json"
        try:
            worker = LocalWorker(load_handler_class(handler), Path(folder), model.name,
                                 {"batchSize": 2, "handler": values}, name=name)
            responses = worker.predict([{"body": b} for b in bodies], [{"body": {"content-type": "image/png"}}] * 2)
            fixed_batch = getattr(worker.handler.task.runtime, "fixed_batch", None)
            worker.handler.task.close()
        except LabelCountError as error:
            raise ValueError(error.describe(str(labels))) from None
        except Exception as error:
            raise ValueError(f"{model} with {handler.name} does not meet the {settings.task} contract "
                             f"(docs/models.md): "
                             f"{type(error).__name__}: {error}") from None
    for response in responses:
        if response.status != 200:
            raise ValueError(f"{model} with {handler.name} does not meet the {settings.task} contract "
                             f"(docs/models.md) on a "
                             f"batch of two images (333x777 and 640x480): {response.status} {response.body}")
    return CheckResult(responses[0].json(), fixed_batch)

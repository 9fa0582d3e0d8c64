"""Build one self-contained ``.mar``: model file + handler package + labels + model-config.yaml.

    python -m handlers.archive --model FILE (--settings settings.json | --task TASK)
                               [--labels FILE] --name NAME [--version 1.0] [--store model_store]

The model is first run through the real task pipeline on a synthetic image, so a file that
does not meet the task's contract (docs/models.md) fails here, not in a TorchServe worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import yaml
from PIL import Image

from handlers.export import parse_overrides
from handlers.settings import TASKS, Settings, load_labels

PACKAGE_DIR = Path(__file__).resolve().parent
# The modules a TorchServe worker needs; tooling (export, archive, server, manage, routing...)
# stays out of the archive. torchserve_handler.py is the --handler, copied to the root.
SHIPPED = {"__init__.py", "errors.py", "images.py", "requests.py", "service.py", "settings.py", "geometry.py",
           "runtimes.py", "task.py", "classification.py", "segmentation.py", "detection.py"}


def check_model(model: Path, settings: Settings) -> object:
    """Run the model through its task on an odd-sized synthetic image; return the answer."""
    from handlers.task import build_task

    ramp = np.linspace(0, 255, 333 * 777 * 3).reshape(333, 777, 3).astype(np.uint8)
    try:
        task = build_task(model, Settings.from_mapping({**settings.to_mapping(), "labels": None}))
        answer = task.run([Image.fromarray(ramp)])[0]
    except Exception as error:
        answer = error
    if isinstance(answer, Exception):
        raise ValueError(f"{model} does not meet the {settings.task} contract (docs/models.md): "
                         f"{type(answer).__name__}: {answer}")
    return answer


def model_config(settings: Settings, batch_size: int, max_batch_delay: int, workers: int) -> dict:
    return {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay,
        "responseTimeout": 120,
        "handler": settings.to_mapping(),
    }


def build_archive(model: Path, settings: Settings, labels: Optional[Path], name: str, version: str, store: Path,
                  batch_size: int = 8, max_batch_delay: int = 20, workers: int = 1, archive_file: Optional[str] = None) -> Path:
    """Write ``store/<archive_file or name>.mar`` and its ``.sha256``; return the archive path."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsvision-archive-") as tmp:
        stage = Path(tmp) / "extra"
        package = stage / "handlers"
        package.mkdir(parents=True)
        for module in sorted(SHIPPED):
            shutil.copy2(PACKAGE_DIR / module, package / module)
        if labels is not None:
            (stage / "labels.json").write_text(json.dumps(load_labels(labels)) + "\n")
        settings = Settings.from_mapping({**settings.to_mapping(), "labels": "labels.json" if labels is not None else None})
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config(settings, batch_size, max_batch_delay, workers), sort_keys=False))
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", name, "--version", version,
            "--serialized-file", str(model), "--handler", str(PACKAGE_DIR / "torchserve_handler.py"),
            "--extra-files", str(stage), "--config-file", str(config), "--export-path", tmp, "--force",
        ]
        # The archiver stages in $TMPDIR/<model name> and deletes it first: give it a private
        # TMPDIR so two builds of the same model name cannot destroy each other's files.
        private_tmp = Path(tmp) / "archiver-tmp"
        private_tmp.mkdir()
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(private_tmp)})
        # Built aside, then moved: a second version never overwrites the first one's file.
        archive = store / f"{archive_file or name}.mar"
        shutil.move(str(Path(tmp) / f"{name}.mar"), str(archive))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.with_suffix(".mar.sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="TorchScript (.pt) or ONNX (.onnx) file")
    parser.add_argument("--settings", type=Path, help="settings.json written by handlers.export")
    parser.add_argument("--task", choices=TASKS, help="task, when there is no settings.json (your own model)")
    parser.add_argument("--labels", type=Path, help="class names: JSON list, JSON {index: name} or .txt, one per line")
    parser.add_argument("--name", required=True, help="model name in TorchServe, e.g. classification_onnx")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--archive-file", help="file name without .mar (default: --name); give each version its own, "
                        "e.g. --name classifier --version 2.0 --archive-file classifier-2.0")
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=20, help="milliseconds a batch may wait to fill")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="handler setting, e.g. --set input_size=320 --set score_threshold=0.4")
    args = parser.parse_args(argv)

    values = json.loads(args.settings.read_text()) if args.settings else {}
    if args.task:
        values["task"] = args.task
    values.update(parse_overrides(args.overrides))
    labels = args.labels
    if labels is None and args.settings and values.get("labels"):
        labels = args.settings.parent / values["labels"]
    values.pop("labels", None)
    try:
        settings = Settings.from_mapping(values)
        answer = check_model(args.model, settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: the model answers a 333x777 test image ({type(answer).__name__} of {len(answer)})")
    archive = build_archive(args.model, settings, labels, args.name, args.version, args.store,
                            args.batch_size, args.max_batch_delay, args.workers, args.archive_file)
    print(f"{args.name}: wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)"
          + ("  [RANDOM weights: answers are meaningless]" if settings.random_weights else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build one self-contained ``.mar``: model file + handler package + labels + model-config.yaml.

    tsvision archive --model FILE (--settings settings.json | --task TASK) [--labels FILE]
                     --name NAME [--version 1.0] [--store model_store] [--handler my_handler.py]

The model is first served in-process through the handler (TorchServe's own context and
``handle``) on a batch of two synthetic images, so a model or handler file that does not meet
the task's contract (docs/models.md) fails here, not in a TorchServe worker.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import List, Optional

from model_archiver.model_packaging_utils import ModelArchiverError, ModelExportUtils

from tsvision.serving.runtimes import RUNTIMES
from tsvision.serving.settings import TASKS, Settings
from tsvision.tools.archive.check import check_model
from tsvision.tools.archive.inspection import inspect_model
from tsvision.tools.archive.package import DEFAULT_HANDLERS, build_archive, default_handler
from tsvision.tools.archive.resolve import ResolutionError, resolve_settings
from tsvision.tools.command import (
    UsageError,
    entry_point,
    existing_file,
    key_values,
    labels_file,
    positive_int,
    read_json,
    writable_folder,
)
from tsvision.tools.command import parser as command_parser
from tsvision.tools.export.model_files import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY, DEFAULT_WORKERS


def check_name(name: str, flag: str = "--name") -> str:
    """TorchServe's rule for model names (the archiver's own check), applied before any model work."""
    try:
        ModelExportUtils.check_model_name_regex_or_exit(name)
    except ModelArchiverError:
        raise UsageError(f"{flag} {name!r}: a model name is letters, digits, '_', '-' and '.', starting with a letter "
                         "or digit (the archiver's rule ^[A-Za-z0-9][A-Za-z0-9_\\-.]*$)") from None
    return name


def check_model_suffix(model: Path) -> None:
    """A model file tsvision can run: a known suffix (said before the model is read)."""
    if model.suffix.lower() not in RUNTIMES:
        raise UsageError(f"--model {model}: cannot tell the backend from the suffix {model.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(sorted(RUNTIMES))}")


@entry_point("tsvision archive")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision archive", __doc__)
    parser.add_argument("--model", type=existing_file, required=True,
                        help="TorchScript (.pt), ONNX (.onnx) or AOTInductor (.pt2) file")
    parser.add_argument("--settings", type=existing_file, help="settings.json written by tsvision export")
    parser.add_argument("--task", choices=TASKS, help="task, when there is no settings.json (your own model)")
    parser.add_argument("--labels", type=existing_file,
                        help="class names: JSON list, JSON {index: name} or .txt, one per line")
    parser.add_argument("--name", required=True, help="model name in TorchServe, e.g. classification_onnx")
    parser.add_argument("--version", default="1.0", help="model version in TorchServe")
    parser.add_argument("--archive-file", help="file name without .mar (default: --name); give each version its own, "
                        "e.g. --name classifier --version 2.0 --archive-file classifier-2.0")
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="folder the .mar is written to")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help="TorchServe's batchSize for the model")
    parser.add_argument("--max-batch-delay", type=int, default=DEFAULT_MAX_BATCH_DELAY,
                        help="milliseconds a batch may wait to fill")
    parser.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS,
                        help="TorchServe workers for the model (minWorkers = maxWorkers), each with its share of "
                        "the cores; 1 for the lowest one-client latency of a large model or half the memory")
    parser.add_argument("--handler", type=existing_file, help="your own handler file: one class subclassing "
                        f"{', '.join(name for _, name in DEFAULT_HANDLERS.values())} from tsvision.serving "
                        "(default: the task's file in handlers/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="handler setting, e.g. --set input_size=320 --set score_threshold=0.4")
    args = parser.parse_args(argv)

    # Everything the command line names is checked before any model work.
    check_name(args.name)
    if args.archive_file is not None:
        check_name(args.archive_file, "--archive-file")
    writable_folder(args.store, "--store")
    values = read_json(args.settings, "--settings") if args.settings else {}
    if not isinstance(values, dict):
        raise UsageError(f"--settings {args.settings}: expected a JSON object of handler settings (settings.json)")
    if args.task:
        values["task"] = args.task
    values.update(key_values(args.overrides))
    labels = args.labels
    if labels is None and args.settings and values.get("labels"):
        labels = args.settings.parent / values["labels"]
        if not labels.is_file():
            raise UsageError(f"--settings {args.settings} names the labels file {values['labels']}, which is not "
                             f"beside it ({labels})")
    values.pop("labels", None)
    if labels is not None:
        labels_file(labels, "--labels" if args.labels else "the labels file")
    try:
        if "task" in values:
            Settings.from_mapping(values)  # unknown settings and bad values, before the model is loaded
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    check_model_suffix(args.model)
    try:
        facts = inspect_model(args.model, values)  # the model file, read once
    except ValueError as error:
        raise UsageError(str(error)) from error
    with tempfile.TemporaryDirectory(prefix="tsvision-archive-check-") as scratch:
        try:
            resolved = resolve_settings(facts, values, labels_given=labels is not None)
        except ResolutionError as error:
            for note in error.notes:
                print(f"{args.name}: {note}")
            raise UsageError(str(error)) from error
        if resolved.metadata_note:
            print(f"{args.name}: {resolved.metadata_note}")
        try:
            settings = Settings.from_mapping(resolved.values)
        except (ValueError, TypeError) as error:
            raise UsageError(str(error)) from error
        for note in resolved.notes:
            print(f"{args.name}: {note}")
        if labels is None and resolved.names:
            labels = Path(scratch) / "labels.json"
            labels.write_text(json.dumps(resolved.names))
        handler = args.handler or default_handler(settings.task, Path(scratch))
        try:
            checked = check_model(args.model, settings, handler, labels, args.name, facts.external_data)
        except ValueError as error:
            raise UsageError(str(error)) from error
        answer = checked.answer
        print(f"{args.name}: {Path(handler).name} answers a batch of two test images "
              f"({type(answer).__name__} of {len(answer)})")
        if checked.fixed_batch:
            size = checked.fixed_batch
            print(f"{args.name}: the model has a fixed batch size of {size} (exported without a dynamic batch axis): "
                  f"it runs one forward pass per {size} image{'s' if size > 1 else ''}"
                  + (", the last chunk padded" if size > 1 else "")
                  + "; export with a dynamic batch axis to batch freely")
        archive = build_archive(args.model, settings, labels, args.name, args.version, args.store, args.batch_size,
                                args.max_batch_delay, args.workers, args.archive_file, args.handler,
                                list(facts.external_data))
    print(f"{args.name}: wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)"
          + (f"  [QUANTISED: {settings.quantized}]" if settings.quantized else "")
          + ("  [RANDOM weights: answers are meaningless]" if settings.random_weights else ""))
    return 0

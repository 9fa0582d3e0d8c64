"""Print the value for ``torch-model-archiver --extra-files``: the serving code an archive needs to
load on a TorchServe host where tsvision is not installed, and the labels.

    tsvision extra-files [--out build/extra-files] [--labels FILE] [--model FILE]

The archiver copies the *children* of a folder given to ``--extra-files`` to the archive root, so
the package (``tsvision/__init__.py`` and ``tsvision/serving/``, what ``tsvision archive`` packs)
is staged as ``OUT/package/tsvision/`` and ``OUT/package`` is printed. Every run stages it afresh
from this install, so the copy follows the code. ``--labels FILE`` (a JSON list, a JSON
``{"0": "name"}`` map or a .txt file, one name per line) is written as ``OUT/labels.json``, the
name the ``handler:`` section of ``tsvision export``'s ``model-config.yaml`` gives, and appended;
``--model FILE`` appends the files an ONNX model keeps its weights in (``model.onnx.data``).
Use one ``--out`` per model when several archives are built at once.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

from tsvision.tools.archive.package import external_data_files, stage_package
from tsvision.tools.command import CommandError, UsageError, entry_point, existing_file, labels_file
from tsvision.tools.command import parser as command_parser

DEFAULT_OUT = Path("build") / "extra-files"


def stage_extra_files(out: Path, labels: Optional[Path] = None, model: Optional[Path] = None) -> List[Path]:
    """Stage the package (and ``labels`` as ``labels.json``) under ``out``; return the paths to give
    ``--extra-files``, in order. Raises ``UsageError`` (or ``ValueError``) with a one-line reason."""
    names = labels_file(labels) if labels is not None else None
    if names is not None and not names:
        raise UsageError(f"--labels {labels} names no classes")
    data_files = external_data_files(model) if model is not None else []
    out.mkdir(parents=True, exist_ok=True)
    package = out / "package"
    if package.exists() and sorted(p.name for p in package.iterdir()) not in ([], ["tsvision"]):
        raise ValueError(f"{package} holds files other than a staged tsvision/; choose another --out")
    fresh = Path(tempfile.mkdtemp(prefix=".package-", dir=out))  # staged aside, then swapped in
    try:
        stage_package(fresh)
        shutil.rmtree(package, ignore_errors=True)
        fresh.rename(package)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    paths = [package]
    staged_labels = out / "labels.json"
    if names is not None:
        staged_labels.write_text(json.dumps(names) + "\n")
        paths.append(staged_labels)
    elif staged_labels.exists():  # from an earlier run for another model: never carried by mistake
        staged_labels.unlink()
    return paths + data_files


@entry_point("tsvision extra-files")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision extra-files", __doc__)
    parser.epilog = ("example:\n  torch-model-archiver --model-name classifier --version 1.0 --handler "
                     "handlers/image_classifier.py \\\n"
                     "    --serialized-file build/classification/model.onnx "
                     "--config-file build/classification/model-config.yaml \\\n"
                     "    --extra-files \"$(tsvision extra-files --labels build/classification/labels.json)\" "
                     "--export-path model_store")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to stage in: OUT/package/tsvision/ and "
                        "OUT/labels.json, restaged on every run (one per model when building in parallel)")
    parser.add_argument("--labels", type=existing_file,
                        help="class names (JSON list, JSON {\"0\": \"name\"} map, or .txt with one "
                        "per line): written as OUT/labels.json and appended "
                        "(without it the archive answers class indices, "
                        "or uses a labels.json/index_to_name.json you add yourself)")
    parser.add_argument("--model", type=existing_file,
                        help="the model file: appends the files an ONNX model keeps its weights in "
                        "(model.onnx.data), which must sit beside it in the archive")
    args = parser.parse_args(argv)
    try:
        paths = stage_extra_files(args.out, args.labels, args.model)
    except ValueError as error:
        raise UsageError(str(error)) from error
    except OSError as error:
        raise CommandError(f"cannot stage in {args.out}: {error.strerror or error}") from error
    print(",".join(str(path) for path in paths))
    return 0


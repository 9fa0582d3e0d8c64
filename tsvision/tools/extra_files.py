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

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from tsvision.serving.settings import load_labels
from tsvision.tools.archive import external_data_files, stage_package

DEFAULT_OUT = Path("build") / "extra-files"


def stage_extra_files(out: Path, labels: Optional[Path] = None, model: Optional[Path] = None) -> List[Path]:
    """Stage the package (and ``labels`` as ``labels.json``) under ``out``; return the paths to give
    ``--extra-files``, in order. Raises ``ValueError`` with a one-line reason."""
    names = load_labels_file(labels) if labels is not None else None
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
    labels_file = out / "labels.json"
    if names is not None:
        labels_file.write_text(json.dumps(names) + "\n")
        paths.append(labels_file)
    elif labels_file.exists():  # from an earlier run for another model: never carried by mistake
        labels_file.unlink()
    return paths + data_files


def load_labels_file(path: Path) -> list:
    """The names in ``path`` (``settings.load_labels``), or ``ValueError`` saying why they cannot be read."""
    try:
        names = load_labels(path)
    except OSError as error:
        raise ValueError(f"cannot read the labels file {path}: {error.strerror or error}") from None
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a labels file (a JSON list, a JSON {{\"0\": \"name\"}} map, "
                         f"or .txt with one name per line): {error}") from None
    if not names:
        raise ValueError(f"{path} names no classes")
    return names


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tsvision extra-files", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the value for torch-model-archiver --extra-files: the serving code (tsvision/serving, staged\n"
                    "as OUT/package/tsvision) so the archive loads where tsvision is not installed, and the labels.",
        epilog="example:\n  torch-model-archiver --model-name classifier --version 1.0 --handler handlers/image_classifier.py \\\n"
               "    --serialized-file build/classification/model.onnx --config-file build/classification/model-config.yaml \\\n"
               "    --extra-files \"$(tsvision extra-files --labels build/classification/labels.json)\" --export-path model_store")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to stage in: OUT/package/tsvision/ and "
                        "OUT/labels.json, restaged on every run (default: %(default)s; one per model when building in parallel)")
    parser.add_argument("--labels", type=Path, help="class names (JSON list, JSON {\"0\": \"name\"} map, or .txt with one per "
                        "line): written as OUT/labels.json and appended (default: none; the archive then answers class indices)")
    parser.add_argument("--model", type=Path, help="the model file: appends the files an ONNX model keeps its weights in "
                        "(model.onnx.data), which must sit beside it in the archive (default: none)")
    args = parser.parse_args(argv)
    if args.model is not None and not args.model.is_file():
        print(f"error: no model file {args.model}", file=sys.stderr)
        return 2
    try:
        paths = stage_extra_files(args.out, args.labels, args.model)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot stage in {args.out}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(",".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

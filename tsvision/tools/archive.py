"""Build one self-contained ``.mar``: model file + handler package + labels + model-config.yaml.

    tsvision archive --model FILE (--settings settings.json | --task TASK) [--labels FILE]
                     --name NAME [--version 1.0] [--store model_store] [--handler my_handler.py]

The model is first served in-process through the handler (TorchServe's own context and
``handle``) on a batch of two synthetic images, so a model or handler file that does not meet
the task's contract (docs/models.md) fails here, not in a TorchServe worker.
"""

from __future__ import annotations

import hashlib
import io
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

from tsvision.serving.settings import TASKS, Settings, load_labels, parse_overrides
from tsvision.tools.command import (CommandError, UsageError, entry_point, existing_file, labels_file, one_line,
                                    parser as command_parser, positive_int, read_json, writable_folder)

PACKAGE_DIR = Path(__file__).resolve().parents[1]          # tsvision/
HANDLERS_DIR = PACKAGE_DIR.parent / "handlers"              # the entry files TorchServe loads
DEFAULT_HANDLERS = {"classification": ("image_classifier.py", "ImageClassifier"),
                    "segmentation": ("image_segmenter.py", "ImageSegmenter"),
                    "detection": ("object_detector.py", "ObjectDetector"),
                    "instance_segmentation": ("instance_segmenter.py", "InstanceSegmenter"),
                    "keypoints": ("keypoint_detector.py", "KeypointDetector")}


def default_handler(task: str, folder: Path) -> Path:
    """The task's entry file from ``handlers/``; written into ``folder`` when this install has no
    ``handlers/`` folder (a non-editable install)."""
    file_name, class_name = DEFAULT_HANDLERS[task]
    if (HANDLERS_DIR / file_name).exists():
        return HANDLERS_DIR / file_name
    path = Path(folder) / file_name
    path.write_text(f"from tsvision.serving import {class_name} as _{class_name}\n\n\n"
                    f"class {class_name}(_{class_name}):\n    \"\"\"tsvision's {class_name}.\"\"\"\n")
    return path


def external_data_files(model: Path) -> List[Path]:
    """The files an ONNX model keeps its weights in beside itself (``torch.onnx.export`` in torch
    2.14 writes ``model.onnx.data`` for larger models by default); they travel with the model."""
    if model.suffix.lower() != ".onnx":
        return []
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(model), load_external_data=False).graph
    locations = {entry.value for tensor in graph.initializer if uses_external_data(tensor)
                 for entry in tensor.external_data if entry.key == "location"}
    files = [model.parent / location for location in sorted(locations)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{model} keeps its weights in {', '.join(missing)}, which is missing: keep the files "
                         "torch.onnx.export wrote together, or export with external_data=False")
    return files


def stage_package(destination: Path) -> None:
    """Copy what a worker imports: ``tsvision/__init__.py`` and the whole ``tsvision/serving``."""
    package = destination / "tsvision"
    package.mkdir(parents=True)
    shutil.copy2(PACKAGE_DIR / "__init__.py", package / "__init__.py")
    shutil.copytree(PACKAGE_DIR / "serving", package / "serving", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def check_model(model: Path, settings: Settings, handler: Path, labels: Optional[Path] = None,
                found: Optional[dict] = None, name: str = "model") -> object:
    """Serve two differently sized synthetic images in one batch through ``handler`` in-process (TorchServe's
    own context and ``handle``); return the first answer. A model or handler that breaks the contract fails here.
    ``found`` (a dict) receives what the check learnt about the model: ``fixed_batch``."""
    from tsvision.serving.tasks.base import LabelCountError
    from tsvision.tools.local import LocalWorker, load_handler_class

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


def probe_outputs(model: Path, values: dict) -> List[np.ndarray]:
    """The model's outputs for one blank image: ``input_size`` if given, else the ONNX input's own
    side when it is fixed, else 640 (the YOLO default)."""
    from tsvision.serving.runtimes import load_runtime

    side = values.get("input_size")
    if side is None and model.suffix.lower() == ".onnx":
        import onnxruntime

        shape = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        side = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None
    side = int(side or 640)
    try:
        return load_runtime(model).run(np.zeros((1, 3, side, side), dtype=np.float32))
    except Exception as error:
        raise ValueError(f"{model} fails on a blank 1×3×{side}×{side} input (set --set input_size=...): "
                         f"{type(error).__name__}: {error}") from None


def is_whole_torchvision_detector(model: Path) -> bool:
    """A scripted torchvision detector (it has ``transform`` and ``backbone``), or its one-image ONNX
    export (a 3-d ``images`` input and ``boxes``, ``labels``, ``scores`` outputs)."""
    if model.suffix.lower() == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
        return len(inputs) == 1 and len(inputs[0].shape) == 3 and sorted(outputs) == ["boxes", "labels", "scores"]
    try:
        import torch
        import torchvision  # noqa: F401 - registers torchvision::nms and roi_align for torch.jit.load

        module = torch.jit.load(str(model), map_location="cpu")
    except Exception:  # not TorchScript, or not loadable here: the probe below says what is wrong
        return False
    return hasattr(module, "transform") and hasattr(module, "backbone")


def from_onnx_metadata(model: Path, values: dict, labels_given: bool = False) -> tuple:
    """What an ultralytics ONNX file says about itself (``names``, ``task``, ``imgsz`` in its
    metadata): the settings it implies, set where ``values`` has none, and its class names unless
    ``labels_given``. Returns (names or None, a note for the user or None)."""
    if model.suffix.lower() != ".onnx":
        return None, None
    from tsvision.tools.ultralytics_export import labels_from_metadata, onnx_metadata, settings_from_metadata

    metadata = onnx_metadata(model)
    implied = settings_from_metadata(metadata)
    if implied.get("task") and values.get("task", implied["task"]) != implied["task"]:
        implied = {}  # the user chose another task: their choice
    taken = {key: value for key, value in implied.items() if key not in values}
    values.update(taken)
    names = None if labels_given else labels_from_metadata(metadata)
    if not taken and names is None:
        return None, None
    said = [f"{k}={v}" for k, v in taken.items()] + ([f"{len(names)} class names"] if names else [])
    return names, f"from the ONNX metadata ({metadata.get('author', 'exporter')}): {', '.join(said)}"


def resolve_detection_format(model: Path, values: dict) -> Optional[str]:
    """Check the model's outputs against ``values['detection_format']``; without one, set it from the
    output shapes when they are unambiguous. Returns what to tell the user (None: nothing to say).
    Raises ``ValueError`` with a clear message when the shapes do not fit or cannot be told apart."""
    from tsvision.serving import formats

    if "detection_format" not in values and is_whole_torchvision_detector(model):
        values.update(detection_format="torchvision", background_index=values.get("background_index", 0))
        return "detection_format torchvision (a whole torchvision detector; background_index 0)"
    record = formats.find("detection", values.get("detection_format", "ssd"))
    if record is None or record.decode is None:
        return None  # a whole detector (torchvision), or no such format: the settings' check says so
    outputs = probe_outputs(model, values)
    shapes = [tuple(o.shape) for o in outputs]
    described = ", ".join("×".join(str(d) for d in shape) for shape in shapes)
    contract = f"{model} does not meet the detection contract (docs/models.md)"
    note = None
    if "detection_format" not in values:
        guessed = formats.guess_format(shapes)
        decodable = [r.name for r in formats.records("detection") if r.decode is not None]
        if guessed is None:
            fitting = [fmt for fmt in decodable if _fits(fmt, outputs, values)]
            if not fitting:
                raise ValueError(f"{contract}: its outputs ({described}) fit none of the detection formats "
                                 f"({', '.join(decodable)}; a whole torchvision detector needs "
                                 "--set detection_format=torchvision)")
            raise ValueError(f"cannot tell the detection output format of {model} from its output shapes ({described}): "
                             f"they fit {' and '.join(fitting)}; pass --set detection_format=FORMAT (docs/models.md)")
        values["detection_format"] = guessed
        if not formats.lookup("detection", guessed).background:
            values.setdefault("background_index", None)
        note = f"detection_format {guessed} (from the output shapes {described}; override with --set detection_format=...)"
    settings = Settings.from_mapping(values)
    try:
        _decode(settings, outputs)
    except ValueError as error:
        raise ValueError(f"{contract}: {error}") from None
    return note


def _decode(settings: Settings, outputs: List[np.ndarray]) -> None:
    """Decode the first image's outputs as ``settings.detection_format`` (raises ``ValueError`` on a mismatch)."""
    from tsvision.serving import formats
    from tsvision.serving.geometry import Placement

    side = settings.input_size
    decode = formats.lookup("detection", settings.detection_format).decode
    decode([o[0] for o in outputs], settings, Placement(side, side, side, side, side))


def _fits(fmt: str, outputs: List[np.ndarray], values: dict) -> bool:
    try:
        from tsvision.serving import formats

        background = values.get("background_index") if formats.lookup("detection", fmt).background else None
        _decode(Settings.from_mapping({**values, "detection_format": fmt, "background_index": background}), outputs)
        return True
    except ValueError:
        return False


def resolve_quantization(model: Path, values: dict) -> Optional[str]:
    """Set ``values['quantized']`` from the model file (``tools.quantize.model_quantization``: its
    ``tsvision.quantized`` metadata, or quantised operators in it). Returns what to tell the user.
    Settings that call a float model quantised are refused."""
    from tsvision.tools.quantize import model_quantization

    found = model_quantization(model)
    said = values.get("quantized") or ""
    if said and not found:
        raise ValueError(f"the settings say quantized: {said}, but {model} has no quantised operators "
                         "(archive model.int8.onnx from tsvision export --quantize int8, or drop the setting)")
    if found:
        values["quantized"] = found
        return f"{model.name} is QUANTISED ({found}): its answers differ slightly from the float model's (report.json beside it has the agreement)"
    values["quantized"] = ""
    return None


def model_config(settings: Settings, batch_size: int = 8, max_batch_delay: int = 20, workers: int = 1) -> dict:
    """An archive's ``model-config.yaml``: TorchServe's batching, workers and timeout, and the
    ``handler:`` section (the defaults are ``tsvision archive``'s)."""
    return {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay,
        "responseTimeout": 120,
        "handler": settings.to_mapping(),
    }


def build_archive(model: Path, settings: Settings, labels: Optional[Path], name: str, version: str, store: Path,
                  batch_size: int = 8, max_batch_delay: int = 20, workers: int = 1, archive_file: Optional[str] = None,
                  handler: Optional[Path] = None) -> Path:
    """Write ``store/<archive_file or name>.mar`` and its ``.sha256``; return the archive path.
    ``handler`` is the ``--handler`` file (default: the task's file in ``handlers/``)."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsvision-archive-") as tmp:
        stage = Path(tmp) / "extra"
        stage.mkdir()
        stage_package(stage)
        for file in external_data_files(model):  # beside the model file in the worker's model dir
            shutil.copy2(file, stage / file.name)
        handler = Path(handler) if handler else default_handler(settings.task, Path(tmp))
        if labels is not None:
            (stage / "labels.json").write_text(json.dumps(load_labels(labels)) + "\n")
        settings = Settings.from_mapping({**settings.to_mapping(), "labels": "labels.json" if labels is not None else None})
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config(settings, batch_size, max_batch_delay, workers), sort_keys=False))
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", name, "--version", version,
            "--serialized-file", str(model), "--handler", str(handler),
            "--extra-files", str(stage), "--config-file", str(config), "--export-path", tmp, "--force",
        ]
        # The archiver stages in $TMPDIR/<model name> and deletes it first: give it a private
        # TMPDIR so two builds of the same model name cannot destroy each other's files.
        private_tmp = Path(tmp) / "archiver-tmp"
        private_tmp.mkdir()
        done = subprocess.run(command, env={**os.environ, "TMPDIR": str(private_tmp)}, capture_output=True, text=True)
        if done.returncode != 0:
            said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise CommandError(f"torch-model-archiver failed (exit status {done.returncode}): {said[-1] if said else 'no message'}")
        # Built aside, then moved: a second version never overwrites the first one's file.
        archive = store / f"{archive_file or name}.mar"
        shutil.move(str(Path(tmp) / f"{name}.mar"), str(archive))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.with_suffix(".mar.sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


def check_name(name: str, flag: str = "--name") -> str:
    """TorchServe's rule for model names (the archiver's own check), applied before any model work."""
    from model_archiver.model_packaging_utils import ModelArchiverError, ModelExportUtils

    try:
        ModelExportUtils.check_model_name_regex_or_exit(name)
    except ModelArchiverError:
        raise UsageError(f"{flag} {name!r}: a model name is letters, digits, '_', '-' and '.', starting with a letter "
                         "or digit (the archiver's rule ^[A-Za-z0-9][A-Za-z0-9_\\-.]*$)") from None
    return name


def check_model_file(model: Path) -> None:
    """A model file tsvision can run: a known suffix, and an ONNX file that parses (said before the model check)."""
    from tsvision.serving.runtimes import RUNTIMES

    if model.suffix.lower() not in RUNTIMES:
        raise UsageError(f"--model {model}: cannot tell the backend from the suffix {model.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(sorted(RUNTIMES))}")
    if model.suffix.lower() == ".onnx":
        import onnx

        try:
            onnx.load(str(model), load_external_data=False)
        except Exception as error:  # protobuf's DecodeError and the like
            raise UsageError(f"--model {model} is not an ONNX model ({type(error).__name__}: {one_line(str(error))})") from error


@entry_point("tsvision archive")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision archive", __doc__)
    parser.add_argument("--model", type=existing_file, required=True, help="TorchScript (.pt), ONNX (.onnx) or AOTInductor (.pt2) file")
    parser.add_argument("--settings", type=existing_file, help="settings.json written by tsvision export")
    parser.add_argument("--task", choices=TASKS, help="task, when there is no settings.json (your own model)")
    parser.add_argument("--labels", type=existing_file, help="class names: JSON list, JSON {index: name} or .txt, one per line")
    parser.add_argument("--name", required=True, help="model name in TorchServe, e.g. classification_onnx")
    parser.add_argument("--version", default="1.0", help="model version in TorchServe")
    parser.add_argument("--archive-file", help="file name without .mar (default: --name); give each version its own, "
                        "e.g. --name classifier --version 2.0 --archive-file classifier-2.0")
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="folder the .mar is written to")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="TorchServe's batchSize for the model")
    parser.add_argument("--max-batch-delay", type=int, default=20, help="milliseconds a batch may wait to fill")
    parser.add_argument("--workers", type=positive_int, default=1, help="TorchServe workers for the model (minWorkers = maxWorkers)")
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
    values.update(parse_overrides(args.overrides))
    labels = args.labels
    if labels is None and args.settings and values.get("labels"):
        labels = args.settings.parent / values["labels"]
        if not labels.is_file():
            raise UsageError(f"--settings {args.settings} names the labels file {values['labels']}, which is not beside it ({labels})")
    values.pop("labels", None)
    if labels is not None:
        labels_file(labels, "--labels" if args.labels else "the labels file")
    try:
        if "task" in values:
            Settings.from_mapping(values)  # unknown settings and bad values, before the model is loaded
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    check_model_file(args.model)
    scratch = tempfile.TemporaryDirectory(prefix="tsvision-labels-")
    try:
        names, metadata_note = from_onnx_metadata(args.model, values, labels_given=labels is not None)
        if metadata_note:
            print(f"{args.name}: {metadata_note}")
        if labels is None and names:
            labels = Path(scratch.name) / "labels.json"
            labels.write_text(json.dumps(names))
        if "task" not in values:
            raise ValueError("pass --task or --settings (the model file does not say its task)")
        note = resolve_detection_format(args.model, values) if values.get("task") == "detection" else None
        quantized_note = resolve_quantization(args.model, values)
        settings = Settings.from_mapping(values)
        if note:
            print(f"{args.name}: {note}")
        if quantized_note:
            print(f"{args.name}: {quantized_note}")
        with tempfile.TemporaryDirectory() as folder:
            handler = args.handler or default_handler(settings.task, Path(folder))
            found: dict = {}
            answer = check_model(args.model, settings, handler, labels, found, args.name)
    except ValueError as error:
        scratch.cleanup()
        raise UsageError(str(error)) from error
    print(f"{args.name}: {Path(handler).name} answers a batch of two test images ({type(answer).__name__} of {len(answer)})")
    if found.get("fixed_batch"):
        size = found["fixed_batch"]
        print(f"{args.name}: the model has a fixed batch size of {size} (exported without a dynamic batch axis): "
              f"it runs one forward pass per {size} image{'s' if size > 1 else ''}"
              + (", the last chunk padded" if size > 1 else "") + "; export with a dynamic batch axis to batch freely")
    archive = build_archive(args.model, settings, labels, args.name, args.version, args.store,
                            args.batch_size, args.max_batch_delay, args.workers, args.archive_file, args.handler)
    scratch.cleanup()
    print(f"{args.name}: wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)"
          + (f"  [QUANTISED: {settings.quantized}]" if settings.quantized else "")
          + ("  [RANDOM weights: answers are meaningless]" if settings.random_weights else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

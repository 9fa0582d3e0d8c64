"""Export a torchvision architecture (random seeded weights, torchvision's pretrained --weights, or a
checkpoint) to TorchScript and ONNX, check both, and report parity, parameters and FLOPs.

    tsvision export --task classification [--arch NAME] [--checkpoint FILE | --weights DEFAULT]
                              [--labels FILE] [--out DIR] [--set key=value ...]
    tsvision export --task detection --arch yolov8n [--checkpoint best.pt]   (ultralytics' exporter)
    tsvision export --task detection --arch retinanet_resnet50_fpn --model-arg min_size=320 --model-arg max_size=480
    tsvision export --task keypoints [--arch keypointrcnn_mobilenet_v3_large_320_fpn | yolov8n-pose]
    tsvision export --task detection --quantize int8 [--calibration-images DIR]   (also model.int8.onnx)
    tsvision export --task classification --arch resnet18 --checkpoint tags.pt --labels tags.json --multi-label
    tsvision export --task embedding --arch resnet50 [--checkpoint FILE | --weights DEFAULT]   (head dropped)

Writes ``model.pt``, ``model.onnx``, ``labels.json``, ``settings.json`` (the handler settings),
``model-config.yaml`` (the same settings for ``torch-model-archiver --config-file``) and
``report.json`` into ``--out``. ``--weights NAME`` loads torchvision's pretrained weights
through torch's hub cache (tools/export/pretrained.py) and takes labels and preprocessing from them;
with ``--quantize int8`` also ``model.int8.onnx`` (ONNX Runtime static quantisation, tools/export/quantize.py)
and its agreement with ``model.onnx`` in ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
import torchvision

from tsvision.serving.settings import TASKS, Settings, check_names_and_types
from tsvision.tools.command import UsageError, entry_point, existing_file, key_values, labels_file, writable_folder
from tsvision.tools.command import parser as command_parser
from tsvision.tools.export.architectures import DEFAULT_ARCHITECTURES, build_exportable
from tsvision.tools.export.model_files import export_files, write_model_config, write_settings
from tsvision.tools.export.pretrained import WeightsError, cache_file
from tsvision.tools.export.quantize import (
    QuantizeError,
    calibration_items,
    describe_agreement,
    quantize_export,
    refusal,
)
from tsvision.tools.export.ultralytics_models import export_yolo, is_ultralytics_config


@entry_point("tsvision export")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision export", __doc__)
    parser.add_argument("--task", required=True, choices=TASKS, help="what the model does")
    parser.add_argument("--arch", help="torchvision architecture (default per task: %s)" % DEFAULT_ARCHITECTURES)
    parser.add_argument("--checkpoint", type=existing_file,
                        help="state dict for the architecture (torch.save); strict load "
                        "(not with --weights)")
    parser.add_argument("--weights", metavar="NAME",
                        help="torchvision's pretrained weights: DEFAULT or a weights name of "
                        "--arch (IMAGENET1K_V1, MobileNet_V3_Small_Weights.IMAGENET1K_V1); labels and preprocessing "
                        "come from them; the file is read from torch's hub cache ($TORCH_HOME/hub/checkpoints) or "
                        "downloaded "
                        "there (not with TSVISION_OFFLINE=1); docs/models.md")
    parser.add_argument("--labels", type=existing_file,
                        help="class names: JSON list, JSON {index: name} or one per line (.txt)")
    parser.add_argument("--num-classes", type=int, help="output classes (default: the number of labels)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    parser.add_argument("--out", type=Path, help="output folder (default build/<task>)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted backend difference")
    parser.add_argument("--pt2", action="store_true", help="also write model.pt2 (torch.export + AOTInductor; "
                        "compiles C++ with g++, a minute or more per model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a handler setting, e.g. --set score_threshold=0.3")
    parser.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for torchvision's model builder, e.g. --model-arg min_size=320 "
                        "--model-arg max_size=480 (a detector's own resize)")
    parser.add_argument("--multi-label", action="store_true",
                        help="classification trained with a sigmoid head (one "
                        "binary score per class): settings multi_label=true, top_k = the number of classes "
                        "(every label at or above its threshold is answered; docs/models.md)")
    parser.add_argument("--quantize", choices=("int8",), help="also write model.int8.onnx: ONNX Runtime static "
                        "quantisation (QDQ) calibrated on --calibration-images, with its agreement with model.onnx "
                        "in report.json (classification, segmentation, SSD-style detection; docs/quantization.md)")
    parser.add_argument("--calibration-images", type=Path, metavar="DIR",
                        help="folder of .jpg/.png photos like the ones "
                        "you will serve, for --quantize (default: scikit-image's photos)")
    args = parser.parse_args(argv)
    if args.calibration_images is not None and not args.quantize:
        parser.error("--calibration-images goes with --quantize int8")
    if args.multi_label and args.task != "classification":
        parser.error("--multi-label goes with --task classification")
    if args.weights is not None and args.checkpoint is not None:
        parser.error("--weights and --checkpoint exclude each other: a checkpoint is the whole state dict "
                     "(start it from the weights when you train, then export it with --checkpoint)")

    out_dir = writable_folder(args.out or Path("build") / args.task, "--out")
    labels = labels_file(args.labels) if args.labels else None
    settings_overrides = key_values(args.overrides)  # a malformed --set is said before the export
    try:
        check_names_and_types(settings_overrides)
    except ValueError as error:
        raise UsageError(f"--set: {error}") from error
    started = time.time()
    if args.quantize and refuse_quantization(args, args.task):  # before a long export
        return 2
    if args.calibration_images is not None:  # a missing or empty folder is said before a long export too
        try:
            calibration_items(args.calibration_images)
        except QuantizeError as error:
            raise UsageError(f"--quantize {args.quantize}: {error}") from error
    if is_ultralytics_config(args.arch):
        if args.weights is not None:
            raise UsageError(f"--weights is for torchvision architectures; for {args.arch} pass your trained "
                             "ultralytics file with --checkpoint (e.g. yolov8n.pt)")
        code = export_ultralytics(args, out_dir)
        return quantize_after_export(args, out_dir) if code == 0 and args.quantize else code
    try:
        exportable = build_exportable(args.task, args.arch, args.checkpoint, args.num_classes, labels, args.seed,
                                      key_values(args.model_args), args.weights)
    except WeightsError as error:
        raise UsageError(f"--weights {args.weights}: {error}") from error
    except (ValueError, RuntimeError, OSError, TypeError) as error:
        raise UsageError(f"cannot build {args.arch or DEFAULT_ARCHITECTURES[args.task]}"
                         f"{' from ' + str(args.checkpoint) if args.checkpoint else ''}: {error}") from error
    if args.quantize and refuse_quantization(args, args.task, exportable.settings.get("detection_format", "ssd")):
        return 2
    if exportable.random_weights:
        print(f"WARNING: {exportable.architecture} has RANDOM weights (seed {args.seed}); nothing can be downloaded "
              f"here. "
              "Its predictions are meaningless. Pass --weights DEFAULT (torchvision's pretrained weights) or "
              "--checkpoint FILE for a trained model.", file=sys.stderr)
    if args.multi_label:  # what --set may still change: top_k, score_threshold, class_thresholds
        settings_overrides = {"multi_label": True, "top_k": max(1, len(exportable.labels)), **settings_overrides}
    write_settings(exportable, out_dir, settings_overrides)
    report = export_files(exportable, out_dir, args.tolerance, pt2=args.pt2)
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in report["max_abs_diff"].items())
    files = report.get("files") or ["model.pt", "model.onnx"] + (["model.pt2"] if args.pt2 else [])
    written = ", ".join(f"{out_dir}/{name}" for name in files)
    print(f"{args.task}: {exportable.architecture} -> {written} in {time.time() - started:.0f} s")
    if report.get("onnx_error"):
        print(f"  NO model.onnx: ONNX export of {exportable.architecture} failed on torch {torch.__version__}: "
              f"{report['onnx_error']}; model.pt (TorchScript) is usable", file=sys.stderr)
    if exportable.weights:
        print(f"  weights: {exportable.weights} ({cache_file(torchvision.models.get_weight(exportable.weights))})")
    else:
        print(f"  weights: {'RANDOM (seed %d)' % args.seed if exportable.random_weights else args.checkpoint}")
    flops = report["flops_per_image"]
    where = " at %dx%d" % tuple(report["parity_image"]) if "parity_image" in report else ""
    print(f"  parameters: {report['parameters']:,}  FLOPs/image{where}: "
          f"{'%.3f G' % (flops / 1e9) if flops else 'not counted'}")
    if "parity_detections" in report:
        print(f"  parity on a {where.strip()[3:]} test image: {report['parity_detections']} detections above the "
              f"threshold compared")
        if not report["parity_detections"]:
            print("  WARNING: no detection above score_threshold on the test image, so parity compared empty answers; "
                  "export again with a lower --set score_threshold=... to compare real detections", file=sys.stderr)
    print(f"  max |difference|: {diffs} (tolerance {args.tolerance:g}) -> {'OK' if report['ok'] else 'TOO LARGE'}")
    if not report["ok"]:
        return 1
    return quantize_after_export(args, out_dir) if args.quantize else 0


def refuse_quantization(args: argparse.Namespace, task: str, detection_format: str = "ssd") -> bool:
    """Raise ``UsageError`` saying why ``--quantize`` cannot apply to this task or detector format; else False."""
    reason = refusal(task, detection_format)
    if reason:
        raise UsageError(f"--quantize {args.quantize}: {reason}")
    return False


def quantize_after_export(args: argparse.Namespace, out_dir: Path) -> int:
    """``--quantize``: model.int8.onnx beside model.onnx, its agreement printed and in report.json."""
    started = time.time()
    try:
        record = quantize_export(out_dir, args.calibration_images, args.quantize)
    except QuantizeError as error:
        raise UsageError(f"--quantize {args.quantize}: {error}") from error
    task = json.loads((out_dir / "settings.json").read_text())["task"]
    print(f"  quantised ({record['format']}, {record['weights']} weights, {record['activations']} activations) -> "
          f"{out_dir}/{record['file']} ({record['size_bytes'] / 1e6:.1f} MB, "
          f"fp32 {record['fp32_size_bytes'] / 1e6:.1f} MB) "
          f"in {time.time() - started:.0f} s; calibrated on {record['calibration']}")
    print(f"  int8 vs fp32 on the same images: {describe_agreement(task, record['agreement'])}")
    sqnr = ", ".join(f"{name} {value} dB" for name, value in record["agreement"]["output_sqnr_db"].items())
    print(f"  output SQNR (signal to quantisation noise): {sqnr}")
    random_weights = json.loads((out_dir / "settings.json").read_text()).get("random_weights")
    if random_weights:
        print("  (random weights: the agreement is int8 against fp32 on a random network, which amplifies small "
              "errors; "
              "measure with your checkpoint)")
    return 0


def export_ultralytics(args: argparse.Namespace, out_dir: Path) -> int:
    """``--arch yolov8n`` and the like: ultralytics' own exporter (tools/export/ultralytics_models.py)."""
    if args.checkpoint is None:
        print(f"WARNING: {args.arch} has RANDOM weights (seed {args.seed}), conditioned so that a few boxes stand out; "
              "nothing can be downloaded here. Its predictions are meaningless. "
              "Pass --checkpoint best.pt for a trained model.",
              file=sys.stderr)
    started = time.time()
    try:
        report = export_yolo(args.arch, out_dir, args.checkpoint, args.seed, tolerance=args.tolerance)
    except (ValueError, RuntimeError, OSError, FileNotFoundError) as error:
        raise UsageError(f"cannot export {args.arch}{' from ' + str(args.checkpoint) if args.checkpoint else ''}: "
                         f"{error}") from error
    if report["task"] != args.task:
        raise UsageError(f"{args.arch} is a {report['task']} model, not {args.task}")
    settings_path = out_dir / "settings.json"
    settings = Settings.from_mapping({**json.loads(settings_path.read_text()), **key_values(args.overrides)})
    settings_path.write_text(json.dumps(settings.to_mapping(), indent=2) + "\n")
    write_model_config(out_dir, settings)
    print(f"{args.task}: {report['architecture']} (ultralytics exporter, format {report['detection_format']}) -> "
          f"{out_dir}/model.onnx in {time.time() - started:.0f} s")
    print("  weights: "
          + (f"RANDOM (seed {args.seed}), conditioned on {report['conditioned_on']}" if report["random_weights"]
             else f"{args.checkpoint}"))
    print(f"  parameters: {report['parameters']:,}  outputs: {report['outputs']}")
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in report["max_abs_diff"].items())
    print(f"  max |difference|: {diffs} (boxes as a fraction of the side; tolerance {args.tolerance:g}) -> "
          f"{'OK' if report['ok'] else 'TOO LARGE'}")
    return 0 if report["ok"] else 1

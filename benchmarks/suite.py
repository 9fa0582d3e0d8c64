"""Every performance measurement in one run: ``python -m benchmarks.suite`` (``bash run.sh bench``).

The steps run in turn, each a subprocess that takes the heavy-run lock itself (so nothing else
heavy runs inside a step), each writing into its own folder of ``--out``:

- ``core``: ``benchmarks.run``: in-process and served per task and backend, the stock handlers,
  TorchServe's floor, picture answers (issue 6's goals; issue 18's goals 2 and 5);
- ``scaling``: ``benchmarks.scaling``: clients 1/8/32/64 × worker/batch configurations (goals 1, 6);
- ``quantize``: ``benchmarks.quantize --served``: int8 against fp32 (goal 3);
- ``families``: ``benchmarks.families``: YOLOv8n, Faster/Mask/Keypoint R-CNN against their own
  tools (goal 4);
- ``budget``: ``benchmarks.budget``: where one request's time goes, stage by stage, against
  TorchServe's floor (issue 28's goal 4);
- ``before_after`` (only when named in ``--only``): the study ``benchmarks.studies.before_after``,
  served JSON throughput of this checkout against the commit before picture answers existed (goal 5,
  "JSON unchanged"; a one-off question, answered in docs/performance.md).

Then it computes issue 18's and issue 28's goals from their results and writes ``goals.md``; with
``--update-docs`` it rewrites the generated parts of docs/performance.md (between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->``) and docs/images/scaling.png. ``--from DIR``
measures nothing and redoes the goals and docs from an earlier run's folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
SCALING_PLOT = ROOT / "docs" / "images" / "scaling.png"
SERVED_GOAL = 0.90             # goal 1: served ÷ in-process at 32 clients
LATENCY_GOAL_MS = 3.0          # goal 2: c=1 p50 over in-process and TorchServe's floor
QUANTIZED_GOAL = 1.5           # goal 3: int8 ÷ fp32 speed in-process
JSON_UNCHANGED = 0.95          # goal 5: JSON after ÷ before picture answers existed (within noise: performance.md)
# issue 28: classification served ÷ the stock image_classifier per backend; YOLOv8n served ÷ ultralytics' predictor
STOCK_GOALS_28 = {"tsvision-onnx": 2.5, "tsvision-torchscript": 1.5}
YOLO_GOAL_28 = 1.2
# The archives' default per task (tsvision archive's --workers 2 --batch-size 4, since 2026-12-04; the task's
# default micro_batch); the names scaling configurations give it.
DEFAULT_CONFIGS = {"classification": ("w2b4",), "detection": ("w2b4",), "segmentation": ("w2b4",)}


def steps(python: str = sys.executable) -> Dict[str, Callable[[Path, List[str]], List[str]]]:
    """Step name -> (its folder, extra args) -> the command that runs it."""
    return {
        "core": lambda out, extra: [python, "-m", "benchmarks.run", "--out", str(out), *extra],
        "scaling": lambda out, extra: [python, "-m", "benchmarks.scaling", "--out", str(out), *extra],
        "quantize": lambda out, extra: [python, "-m", "benchmarks.quantize", "--served", "--out", str(out), *extra],
        "families": lambda out, extra: [python, "-m", "benchmarks.families", "--out", str(out), *extra],
        "budget": lambda out, extra: [python, "-m", "benchmarks.budget", "--out", str(out), *extra],
        "before_after": lambda out, extra: [python, "-m", "benchmarks.studies.before_after", "--out", str(out), *extra],
    }


# the steps ``bash run.sh bench`` runs; before_after is a study, run when ``--only`` names it
DEFAULT_STEPS = ("core", "scaling", "quantize", "families", "budget")


def load_results(out: Path) -> Dict[str, dict]:
    """Each step's results from its folder (a step that did not run or failed is missing)."""
    found: Dict[str, dict] = {}
    for name in ("core", "scaling", "families", "budget", "before_after"):
        path = out / name / "results.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    quantized = sorted(p for p in (out / "quantize").glob("quantize-*.json")) if (out / "quantize").exists() else []
    if quantized:
        found["quantize"] = json.loads(quantized[-1].read_text())
    return found


def _row(goal: str, task: str, value: Optional[float], target: Optional[float], unit: str = "×",
         higher_is_better: bool = True, detail: str = "") -> dict:
    met = None if value is None or target is None else (value >= target if higher_is_better else value <= target)
    return {"goal": goal, "task": task, "value": value, "target": target, "unit": unit,
            "higher_is_better": higher_is_better, "met": met, "detail": detail}


def served_rows(scaling: dict) -> List[dict]:
    """Goal 1: served at 32 clients ÷ the best in-process rate, with the default configuration and the best one."""
    rows = []
    for task, result in scaling["results"].items():
        ratios = {name: r for name, r in result["served_vs_inprocess_c32"].items() if r is not None}
        best_inprocess = result["inprocess_best"]
        where = f"in-process best {best_inprocess['images_per_s']} img/s (batch {best_inprocess['batch_size']})"
        default = next((name for name in DEFAULT_CONFIGS.get(task, ("w1b8",)) if name in ratios), None)
        if default:
            rows.append(_row("1. served ÷ in-process, c=32, default configuration", task, ratios[default], SERVED_GOAL,
                             detail=f"{default}; {where}"))
        if ratios:
            best = max(ratios, key=ratios.get)
            tried = ", ".join(f"{n} {r:.2f}" for n, r in ratios.items())
            rows.append(_row("1. served ÷ in-process, c=32, best configuration", task, ratios[best], SERVED_GOAL,
                             detail=f"{best}; tried: {tried}"))
    return rows


def latency_rows(core: dict) -> List[dict]:
    """Goal 2, as ``benchmarks.report`` computed it for the ONNX Runtime backend."""
    return [_row("2. c=1 p50 over in-process and TorchServe's floor", g["task"], g["value"], g["target"], "ms", False,
                 g["detail"])
            for g in core.get("goals", []) if g["goal"].startswith("c=1 p50 minus in-process latency minus")
            and g["detail"].startswith("tsvision-onnx")]


def quantize_rows(quantize: dict) -> List[dict]:
    """Goal 3: int8 ÷ fp32 speed of the whole pipeline in-process, its best batch size, for each task measured."""
    rows = []
    for task, result in quantize["results"].items():
        batches = {key: value for key, value in result.items() if key.startswith("batch_")}
        if not batches:
            continue
        best = max(batches, key=lambda key: batches[key]["pipeline_speedup"])
        served = (quantize.get("served") or {}).get(task, {}).get("int8_vs_fp32")
        detail = "; ".join(f"{key.replace('_', ' ')}: pipeline ×{b['pipeline_speedup']}, "
                           f"model alone ×{b['model_speedup']}"
                           for key, b in batches.items())
        detail += f"; served ×{served}" if served is not None else ""
        target = QUANTIZED_GOAL if task in ("classification", "detection") else None
        rows.append(_row("3. int8 ÷ fp32 in-process (best batch)", task, batches[best]["pipeline_speedup"], target,
                         detail=detail))
    return rows


def family_rows(families: dict) -> List[dict]:
    """Goal 4: ours served ÷ the reference's in-process throughput, and whether the answers are the same."""
    return [_row(f"4. served ÷ {g['reference']}", g["family"], g["ratio"], 1.0,
                 detail=f"ours {g['ours_req_s']} req/s vs {g['reference_img_s']} img/s; answers: {g['answers']}")
            for g in families.get("goals", [])]


def picture_rows(core: dict, before_after: Optional[dict]) -> List[dict]:
    """Goal 5: picture ÷ JSON req/s served (a cost, no target), and JSON after ÷ before picture answers existed."""
    rows = [_row(f"5. {p['format'].upper()} picture ÷ JSON req/s, c={p['clients']}", p["task"], p["ratio"], None,
                 detail=f"{p['picture_req_s']} vs {p['json_req_s']} req/s; {report._bytes(p['picture_bytes'])} vs "
                        f"{report._bytes(p['json_bytes'])} B per answer")
            for p in report.picture_rows(core) if p["variant"] == "tsvision-onnx"]
    for task, result in ((before_after or {}).get("results") or {}).items():
        rows.append(_row("5. JSON req/s with picture answers ÷ before them (c=8)", task, result["after_vs_before"],
                         JSON_UNCHANGED,
                         detail=f"{result['after_median']} vs {result['before_median']} req/s, medians of "
                                f"{len(result['after_req_s'])} alternating rounds; before = {before_after['ref']}"))
    return rows


def goals(found: Dict[str, dict]) -> List[dict]:
    """Issue 18's goals from whatever steps ran, in the issue's order."""
    rows: List[dict] = []
    if "scaling" in found:
        rows += served_rows(found["scaling"])
    if "core" in found:
        rows += latency_rows(found["core"])
    if "quantize" in found:
        rows += quantize_rows(found["quantize"])
    if "families" in found:
        rows += family_rows(found["families"])
    if "core" in found:
        rows += picture_rows(found["core"], found.get("before_after"))
    return rows


def goals28(found: Dict[str, dict]) -> List[dict]:
    """Issue 28's goals that the steps measure: 1 (YOLOv8n served ÷ ultralytics' predictor), 2 (classification
    served ÷ the stock handler per backend, at the core step's most clients) and 3 (served ÷ in-process at the
    default configuration, 32 clients); goal 4 is the budget table, goal 5 a study (docs/performance.md)."""
    rows = []
    for g in (found.get("families") or {}).get("goals", []):
        if g["family"] == "yolov8n":
            rows.append(_row(f"1. served ÷ {g['reference']}", "yolov8n", g["ratio"], YOLO_GOAL_28,
                             detail=f"ours {g['ours_req_s']} req/s vs {g['reference_img_s']} img/s"))
    for g in (found.get("core") or {}).get("goals", []):
        variant = g["detail"].split(" ")[0]
        if g["task"] == "classification" and g["goal"].startswith("served throughput vs stock handler") \
                and variant in STOCK_GOALS_28:
            rows.append(_row(f"2. {g['goal']}", f"classification ({variant[len('tsvision-'):]})", g["value"],
                             STOCK_GOALS_28[variant], detail=g["detail"]))
    rows += [dict(row, goal="3. served ÷ in-process, c=32, default configuration")
             for row in served_rows(found["scaling"]) if "default" in row["goal"]] if "scaling" in found else []
    return rows


SCALING_NOTE = "Goal 6 (the scaling picture) is the plot and table under \"Scaling\"."
NOTE_28 = ("Goal 4 is the budget table, goal 5 the `decode_draft` study, goal 6 the GPU script "
           "(\"Round three\").")


def goals_markdown(rows: List[dict], out: Path, started: str, note: str = SCALING_NOTE) -> str:
    lines = [f"From `bash run.sh bench` (`python -m benchmarks.suite`), {started}, results in `{out.name}/`. "
             f"Weights: RANDOM (seeded). {note}", "",
             "| goal | task | measured | target | met | detail |", "|---|---|---|---|---|---|"]
    for row in rows:
        value = "–" if row["value"] is None else f"{row['value']:g} {row['unit']}"
        sign = "≥" if row["higher_is_better"] else "≤"
        target = "–" if row["target"] is None else f"{sign} {row['target']:g} {row['unit']}"
        met = {True: "yes", False: "**no**",
               None: "not measured" if row["value"] is None else "(no target)"}[row["met"]]
        lines.append(f"| {row['goal']} | {row['task']} | {value} | {target} | {met} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def quantize_markdown(quantize: dict) -> str:
    """int8 against fp32 per task and batch size, in-process and served, with int8's agreement with fp32
    (on the calibration photos, from the export's report; older runs: on the benchmark photo)."""
    cpu = quantize.get("cpu", {})
    photo = any("agreement_on_photo" in result for result in quantize["results"].values())
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu.items() if isinstance(v, bool))
    lines = [f"CPU: {cpu.get('model', '?')} ({flags}).", "",
             "| task | batch | model fp32 ms | model int8 ms | model ×| pipeline fp32 ms | pipeline int8 ms "
             "| pipeline × "
             f"| served × | agreement {'on the photo' if photo else 'on the calibration photos'} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, result in quantize["results"].items():
        served = (quantize.get("served") or {}).get(task, {}).get("int8_vs_fp32")
        agreement = json.dumps(result.get("agreement_on_photo" if photo else "agreement_on_calibration_photos", {}),
                               separators=(", ", ": "))
        for key in (k for k in result if k.startswith("batch_")):
            ms = result[key]["ms_per_batch"]
            lines.append(f"| {task} | {key[6:]} | {ms['model_fp32']} | {ms['model_int8']} | "
                         f"{result[key]['model_speedup']} | "
                         f"{ms['pipeline_fp32']} | {ms['pipeline_int8']} | {result[key]['pipeline_speedup']} | "
                         f"{'–' if served is None else served} | {agreement} |")
    for name, probe in (quantize.get("probes") or {}).items():
        lines.append(f"| probe: {name} | {probe['batch_size']} | {probe['ms']['fp32']} | {probe['ms']['int8']} | "
                     f"{probe['speedup']} "
                     "| – | – | – | – | – |")
    return "\n".join(lines) + "\n"


def update_docs(found: Dict[str, dict], rows: List[dict], out: Path, started: str, doc: Path = DOC) -> List[str]:
    """Rewrite each generated section whose markers ``doc`` has; returns the sections written."""
    sections: Dict[str, Callable[[], str]] = {"goals18": lambda: goals_markdown(rows, out, started),
                                              "goals28": lambda: goals_markdown(goals28(found), out, started, NOTE_28)}
    if "budget" in found and (out / "budget" / "results.md").exists():
        sections["budget"] = lambda: (out / "budget" / "results.md").read_text()
    if "scaling" in found:
        sections["scaling"] = lambda: (out / "scaling" / "scaling.md").read_text()
    if "families" in found:
        sections["families"] = lambda: (out / "families" / "results.md").read_text()
    if "quantize" in found:
        sections["quantize"] = lambda: quantize_markdown(found["quantize"])
    if "core" in found:
        sections["bench"] = lambda: (out / "core" / "results.md").read_text()
    text = doc.read_text() if doc.exists() else ""
    written = [name for name, render in sections.items() if f"<!-- {name}:start -->" in text
               and report.update_docs(doc, render(), f"<!-- {name}:start -->", f"<!-- {name}:end -->")]
    if "scaling" in found and (out / "scaling" / "scaling.png").exists():
        shutil.copyfile(out / "scaling" / "scaling.png", SCALING_PLOT)
        written.append(str(SCALING_PLOT.relative_to(ROOT)))
    return written


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DEFAULT_STEPS), help="steps to run, of: " + ",".join(steps())
                        + f" (default {','.join(DEFAULT_STEPS)})")
    for name in steps():
        parser.add_argument(f"--{name.replace('_', '-')}-args", default="", metavar="ARGS",
                            help=f"extra arguments for the {name} step, one string (e.g. \"--seconds 4\")")
    parser.add_argument("--out", type=Path, help="default results/suite-<time>")
    parser.add_argument("--from", dest="source", type=Path, metavar="DIR",
                        help="measure nothing: goals and docs from an earlier run")
    parser.add_argument("--update-docs", action="store_true",
                        help=f"rewrite the generated parts of {DOC.relative_to(ROOT)}")
    parser.add_argument("--keep-going", action="store_true", help="run the later steps when one fails")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    import shlex

    args = parse_args(argv)
    started = time.time()
    out = (args.source or args.out or ROOT / "results" / time.strftime("suite-%Y%m%d-%H%M%S")).resolve()
    failed = []
    if not args.source:
        chosen = [s for s in args.only.split(",") if s]
        unknown = set(chosen) - set(steps())
        if unknown:
            raise SystemExit(f"unknown steps {sorted(unknown)} (of {', '.join(steps())})")
        out.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            extra = shlex.split(getattr(args, f"{name}_args"))
            command = steps()[name](out / name, extra)
            tick = time.time()
            print(f"suite: {name}: {shlex.join(command[1:])}", flush=True)
            code = subprocess.run(command, cwd=ROOT).returncode
            print(f"suite: {name} {'done' if code == 0 else f'FAILED ({code})'} in {(time.time() - tick) / 60:.1f} min",
                  flush=True)
            if code != 0:
                failed.append(name)
                if not args.keep_going:
                    break
    found = load_results(out)
    rows = goals(found)
    stamp = out / "suite.json"
    if not args.source:
        stamp.write_text(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                                     "steps": args.only, "failed": failed}) + "\n")
    when = json.loads(stamp.read_text())["started"] if stamp.exists() else "an earlier run"
    (out / "goals.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "goals.md").write_text(goals_markdown(rows, out, when) + "\nIssue 28:\n\n"
                                  + goals_markdown(goals28(found), out, when, NOTE_28))
    print(goals_markdown(rows, out, when))
    print("Issue 28:\n\n" + goals_markdown(goals28(found), out, when, NOTE_28))
    if args.update_docs:
        print("suite: docs updated: " + ", ".join(update_docs(found, rows, out, when)))
    outcome = "FAILED steps: " + ", ".join(failed) if failed else "done"
    print(f"suite: {outcome} in {(time.time() - started) / 60:.1f} min -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

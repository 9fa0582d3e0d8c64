"""Benchmark results -> goals, a Markdown table and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

TASKS = ("classification", "segmentation", "detection")
STOCK_RATIO_GOAL = {"classification": 2.0, "segmentation": 1.5, "detection": 1.5}
ONNX_OVER_TORCHSCRIPT_GOAL = 1.3
SERVED_OVER_INPROCESS_GOAL = 0.85
LATENCY_MARGIN_MS = 3.0
SEGMENTATION_SIZE_GOAL = 50.0


def _served(result: dict, connections: int) -> Optional[dict]:
    return next((s for s in result.get("served", []) if s["connections"] == connections), None)


def _inprocess(result: dict, batch_size: int) -> Optional[dict]:
    return next((r for r in result.get("inprocess", []) if r["batch_size"] == batch_size), None)


def _find(results: List[dict], task: str, variant: str) -> Optional[dict]:
    return next((r for r in results if r["task"] == task and r["variant"] == variant), None)


def _throughput(result: Optional[dict], connections: int) -> Optional[float]:
    served = _served(result, connections) if result else None
    return served["throughput"] if served and served["throughput"] > 0 else None


def goals(data: dict) -> List[dict]:
    """Every goal of issue 6 with its measured value; ``met`` is None when it could not be measured."""
    results, config = data["results"], data["config"]
    top = max(config["concurrency"])
    rows: List[dict] = []

    def add(goal: str, task: str, value: Optional[float], target: float, higher_is_better: bool = True,
            unit: str = "×", detail: str = "") -> None:
        met = None if value is None else (value >= target if higher_is_better else value <= target)
        rows.append({"goal": goal, "task": task, "value": value, "target": target, "unit": unit, "met": met,
                     "detail": detail})

    ours = [v for v in config["variants"] if v.startswith("tsvision-")]
    floor = _find(results, "torchserve", "empty-handler")  # TorchServe's own cost, shown beside the goals it bounds
    floor_rate = _throughput(floor, top)
    floor_single = _served(floor, 1) if floor else None
    floor_rate_note = f"; TorchServe with an empty handler: {floor_rate:.1f} req/s" if floor_rate else ""
    floor_p50_note = (f"; TorchServe with an empty handler: p50 {floor_single['latency_ms']['p50']:.1f} ms"
                      if floor_single and floor_single["latency_ms"] else "")
    for task in TASKS:
        stock = _throughput(_find(results, task, "stock-torchscript"), top)
        for variant in ours:
            mine = _throughput(_find(results, task, variant), top)
            if stock is not None and mine is not None:
                add(f"served throughput vs stock handler (c={top})", task, round(mine / stock, 2),
                    STOCK_RATIO_GOAL[task],
                    detail=f"{variant} {mine:.1f} vs stock {stock:.1f} req/s")
    for task in TASKS:
        onnx = _throughput(_find(results, task, "tsvision-onnx"), top)
        script = _throughput(_find(results, task, "tsvision-torchscript"), top)
        if onnx is not None and script is not None:
            add(f"ONNX Runtime vs TorchScript, served (c={top})", task, round(onnx / script, 2),
                ONNX_OVER_TORCHSCRIPT_GOAL,
                detail=f"{onnx:.1f} vs {script:.1f} req/s")
    batch = config["batch_size"]
    for task in TASKS:
        for variant in ours:
            result = _find(results, task, variant)
            served = _throughput(result, top)
            local = _inprocess(result, batch) if result else None
            if served is not None and local is not None:
                add(f"served (c={top}) / in-process (batch {batch})", task, round(served / local["images_per_s"], 2),
                    SERVED_OVER_INPROCESS_GOAL,
                    detail=f"{variant} {served:.1f} vs {local['images_per_s']:.1f} img/s{floor_rate_note}")
    for task in TASKS:
        for variant in ours:
            result = _find(results, task, variant)
            single = _served(result, 1) if result else None
            local = _inprocess(result, 1) if result else None
            if single is not None and single["latency_ms"] and local is not None:
                excess = single["latency_ms"]["p50"] - local["latency_ms_p50"]
                add("c=1 p50 minus in-process single-image latency", task, round(excess, 1),
                    config["max_batch_delay"] + LATENCY_MARGIN_MS, higher_is_better=False, unit="ms",
                    detail=f"{variant}: p50 {single['latency_ms']['p50']:.1f} ms, "
                           f"in-process {local['latency_ms_p50']:.1f} ms, "
                           f"batch delay {config['max_batch_delay']} ms{floor_p50_note}")
    floor_p50 = floor_single["latency_ms"]["p50"] if floor_single and floor_single["latency_ms"] else None
    for task in TASKS:
        for variant in ours:
            result = _find(results, task, variant)
            single = _served(result, 1) if result else None
            local = _inprocess(result, 1) if result else None
            if single is not None and single["latency_ms"] and local is not None and floor_p50 is not None:
                excess = single["latency_ms"]["p50"] - local["latency_ms_p50"] - floor_p50
                add("c=1 p50 minus in-process latency minus the empty handler's c=1 p50", task, round(excess, 1),
                    LATENCY_MARGIN_MS, higher_is_better=False, unit="ms",
                    detail=f"{variant}: {single['latency_ms']['p50']:.1f} − {local['latency_ms_p50']:.1f} − "
                           f"{floor_p50:.1f} ms")
    stock = _find(results, "segmentation", "stock-torchscript")
    for variant in ours:
        mine = _find(results, "segmentation", variant)
        if stock and mine and stock.get("probe", {}).get("body_bytes") and mine.get("probe", {}).get("body_bytes"):
            ratio = stock["probe"]["body_bytes"] / mine["probe"]["body_bytes"]
            add("segmentation response size, stock / ours", "segmentation", round(ratio, 1), SEGMENTATION_SIZE_GOAL,
                detail=f"{variant} {mine['probe']['body_bytes']:,} B vs stock {stock['probe']['body_bytes']:,} B")
    return rows


def picture_rows(data: dict) -> List[dict]:
    """Served picture answers against JSON at the same client count: req/s, bytes, the ratio."""
    clients = data["config"].get("picture_clients")
    rows = []
    for result in data["results"]:
        json_rate = _throughput(result, clients)
        for kind, point in (result.get("pictures") or {}).items():
            rate = point["throughput"] or None
            rows.append({"task": result["task"], "variant": result["variant"], "format": kind, "clients": clients,
                         "json_req_s": json_rate, "picture_req_s": rate, "picture_bytes": point["bytes_per_response"],
                         "json_bytes": (_served(result, clients) or {}).get("bytes_per_response"),
                         "failed": point["failed"],
                         "ratio": round(rate / json_rate, 2) if rate and json_rate else None})
    return rows


def _bytes(value: Optional[int]) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(data: dict) -> str:
    """The results table, the goals table, and how they were made."""
    config, machine = data["config"], data["machine"]
    conc = config["concurrency"]
    lines = [
        f"Run `{data['command']}` on {data['started']} ({data['elapsed_s']:.0f} s).",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']:.0f} GiB RAM; "
        f"torch {machine['torch']}, "
        f"onnxruntime {machine['onnxruntime']}, TorchServe {machine['torchserve']}.",
        f"Server: 1 TorchServe, {config['workers']} worker(s) per model, batch size {config['batch_size']}"
        + (f" (stock handlers: {config['stock_workers']} worker(s), batch size {config['stock_batch_size']})"
           if "stock_workers" in config else "") +
        f", max batch delay {config['max_batch_delay']} ms; load: wrk, {config['seconds']:g} s per point after "
        f"{config['warmup']:g} s warm-up, on 127.0.0.1. Photo: {config['photo']}. Weights: RANDOM (seeded).",
        "",
        "| task | variant | in-process img/s " + " ".join(f"(b{b}) |" for b in config["batch_sizes"])
        + "".join(f" served req/s c={c} |" for c in conc)
        + "".join(f" p50/p95/p99 ms c={c} |" for c in conc) + " response B | worker RSS MB |",
        "|---|---|" + "---|" * (len(config["batch_sizes"]) + 2 * len(conc) + 2),
    ]
    for result in data["results"]:
        cells = [result["task"], result["variant"]]
        cells += [_fmt((_inprocess(result, b) or {}).get("images_per_s")) for b in config["batch_sizes"]]
        cells += [_fmt(_throughput(result, c)) for c in conc]
        for c in conc:
            served = _served(result, c)
            if not served or not served["latency_ms"]:
                cells.append("–")
                continue
            cells.append("/".join(f"{served['latency_ms'][k]:.0f}" for k in ("p50", "p95", "p99"))
                         + (f" ({served['failed']} failed)" if served["failed"] else ""))
        probe = result.get("probe", {})
        cells.append(f"{probe['body_bytes']:,}" if probe.get("body_bytes") else "–")
        cells.append(_fmt(result.get("rss_mb"), 0))
        lines.append("| " + " | ".join(cells) + " |")
    pictures = picture_rows(data)
    if pictures:
        lines += ["",
                  f"Picture answers (`Accept: image/png|jpeg`), served at c={config.get('picture_clients')}, against "
                  "JSON at the same client count:", "",
                  "| task | variant | format | JSON req/s | picture req/s | picture ÷ JSON | JSON B | picture B |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in pictures:
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            lines.append(f"| {row['task']} | {row['variant']} | {row['format']} | {_fmt(row['json_req_s'])} | "
                         f"{_fmt(row['picture_req_s'])}{failed} | {_fmt(row['ratio'], 2)} | "
                         f"{_bytes(row['json_bytes'])} | "
                         f"{_bytes(row['picture_bytes'])} |")
    lines += ["", "| goal | task | measured | target | met | detail |", "|---|---|---|---|---|---|"]
    for goal in data["goals"]:
        comparison = "≥" if goal["unit"] == "×" else "≤"
        value = "–" if goal["value"] is None else f"{goal['value']:g} {goal['unit']}"
        met = {True: "yes", False: "**no**", None: "not measured"}[goal["met"]]
        target = f"{comparison} {goal['target']:g} {goal['unit']}"
        lines.append(f"| {goal['goal']} | {goal['task']} | {value} | {target} | {met} | {goal['detail']} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """Served throughput by concurrency, one panel per task, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in data["results"])]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    conc = data["config"]["concurrency"]
    for axis, task in zip(axes[0], tasks):
        for result in (r for r in data["results"] if r["task"] == task):
            values = [_throughput(result, c) or 0.0 for c in conc]
            axis.plot(conc, values, marker="o", label=result["variant"],
                      linestyle="--" if result["variant"].startswith("stock") else "-")
        axis.set_title(task)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("requests/s")
        axis.set_xscale("log", base=2)
        axis.set_xticks(conc, [str(c) for c in conc])
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"served throughput, {data['machine']['cores']} cores, batch {data['config']['batch_size']}, "
                    f"delay {data['config']['max_batch_delay']} ms (random weights)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def update_docs(doc: Path, table: str, start: str = "<!-- bench:start -->", end: str = "<!-- bench:end -->") -> bool:
    """Replace the text between the markers of ``doc`` with ``table``; False if the markers are missing."""
    if not doc.exists():
        return False
    text = doc.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{table}{end}{tail}")
    return True


def summary_lines(data: dict) -> List[str]:
    return [f"{g['goal']} [{g['task']}]: {g['value']} {g['unit']} (target {g['target']:g}) -> "
            f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[g['met']]}  {g['detail']}" for g in data["goals"]]



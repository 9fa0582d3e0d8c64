"""Per-variant results of an A/B split, from nginx's access log and TorchServe's metrics.

    tsvision report --log build/nginx/access.log [--metrics http://127.0.0.1:8082/metrics --model NAME] [--json]
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote

import numpy as np
import requests

from tsvision.tools.command import UsageError, describe, entry_point
from tsvision.tools.command import parser as command_parser


def variant_report(log: Path) -> Dict[str, dict]:
    """{variant: {requests, errors, error_rate, p50_ms, p95_ms, top_labels}} from the JSON access log."""
    rows = defaultdict(list)
    for line in Path(log).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if entry.get("variant"):
                rows[entry["variant"]].append(entry)
    report = {}
    for variant, entries in sorted(rows.items()):
        times = np.array([float(e["request_time"]) * 1000 for e in entries])
        errors = sum(not 200 <= int(e["status"]) < 300 for e in entries)
        labels = Counter(unquote(e["top_label"]) for e in entries if e.get("top_label"))
        report[variant] = {
            "requests": len(entries),
            "errors": errors,
            "error_rate": errors / len(entries),
            "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)),
            "top_labels": {label: count / len(entries) for label, count in labels.most_common(5)},
        }
    return report


def served_by_version(metrics_text: str, model: str) -> Dict[str, float]:
    """TorchServe's ``ts_inference_requests_total`` by model version (shadow copies included)."""
    counts = {}
    pattern = re.compile(r'^ts_inference_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+]+)')
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            if labels.get("model_name") == model:
                counts[labels.get("model_version", "")] = float(match["value"])
    return counts


def format_table(report: Dict[str, dict], served: Optional[Dict[str, float]] = None) -> str:
    lines = [f"{'variant':10s} {'requests':>9s} {'errors':>7s} {'p50 ms':>8s} {'p95 ms':>8s}  top labels",]
    for variant, r in report.items():
        labels = ", ".join(f"{k} {v:.0%}" for k, v in r["top_labels"].items())
        lines.append(f"{variant:10s} {r['requests']:9d} {r['error_rate']:7.1%} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f}  "
                     f"{labels}")
    if served:
        lines.append("TorchServe inference requests by version: " + ", ".join(f"{k} {v:.0f}" for k,
                                                                              v in sorted(served.items())))
    return "\n".join(lines)


@entry_point("tsvision report")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision report", __doc__)
    parser.add_argument("--log", type=Path, default=Path("build/nginx/access.log"), help="the router's JSON access log")
    parser.add_argument("--metrics", help="TorchServe's Prometheus endpoint, e.g. http://127.0.0.1:8082/metrics")
    parser.add_argument("--model", help="model name to read from the metrics")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.metrics and not args.model:
        raise UsageError("--metrics needs --model (the model whose requests to count)")
    if not args.log.is_file():
        raise UsageError(f"--log {args.log}: no such file (the access log of the router tsvision route nginx "
                         f"configured)")
    try:
        report = variant_report(args.log)
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--log {args.log} is not the router's JSON access log ({describe(error)})") from error
    served = served_by_version(requests.get(args.metrics, timeout=10).text,
                               args.model) if args.metrics and args.model else None
    print(json.dumps({"variants": report, "served_by_version": served},
                     indent=2) if args.json else format_table(report, served))
    return 0


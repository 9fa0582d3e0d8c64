"""What an explanation costs against a prediction, per backend, on a real TorchServe.

    python -m benchmarks.explain [--exports build/bench] [--predictions 20] [--explanations 5]

The default classification model (``tsvision export``'s, random seeded weights; reused from
``--exports`` like benchmarks/run.py) is archived for TorchScript and ONNX, both served by one
TorchServe on loopback ports; one client sends the benchmark photo (1280×720 JPEG) one request
at a time: ``--predictions`` to ``/predictions/NAME``, then ``--explanations`` to
``/explanations/NAME`` per method and parameters, after two warm-up requests of each. Printed: the
median milliseconds per request, and the ratio to the same backend's prediction, in one table.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import requests

from benchmarks.budget import timed
from benchmarks.models import build_ours, prepare_exports
from benchmarks.photo import make_photo
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
# (backend, options): the defaults first, then the cheaper and dearer settings.
VARIANTS = [
    ("torchscript", {}),
    ("torchscript", {"steps": 8}),
    ("torchscript", {"steps": 64}),
    ("torchscript", {"method": "occlusion"}),
    ("onnx", {}),
    ("onnx", {"window": 56, "stride": 28}),
    ("onnx", {"window": 16, "stride": 8}),
]


def run(server: TorchServe, photo: bytes, predictions: int, explanations: int) -> List[dict]:
    """One row per variant: its method and parameters, ms per explanation, ms per prediction, the ratio."""
    import base64

    headers = server.headers("inference")
    data = base64.b64encode(photo).decode("ascii")
    rows, predicted = [], {}
    with requests.Session() as session:
        def post(path: str, **kwargs) -> dict:
            response = session.post(f"{server.inference_url}/{path}", timeout=600, **kwargs)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
            return response.json()

        for backend, options in VARIANTS:
            name = f"classification_{backend}"
            if backend not in predicted:
                predict = partial(post, f"predictions/{name}", data=photo,
                                  headers={**headers, "Content-Type": "image/jpeg"})
                predicted[backend] = timed(predict, predictions, warm=2)
            explain = partial(post, f"explanations/{name}", json={"data": data, **options}, headers=headers)
            answer = explain()
            ms = timed(explain, explanations, warm=2)
            rows.append({"backend": backend, "method": answer["method"], "parameters": answer["parameters"],
                         "explanation_ms": round(ms, 1), "prediction_ms": round(predicted[backend], 1),
                         "ratio": round(ms / predicted[backend], 1)})
    return rows


def table(rows: List[dict]) -> str:
    lines = ["| backend | method | parameters | ms per explanation | ms per prediction | ratio |",
             "|---|---|---|---:|---:|---:|"]
    for row in rows:
        shown = ", ".join(f"{k} {v}" for k, v in row["parameters"].items() if k != "baseline")
        lines.append(f"| {row['backend']} | {row['method']} | {shown} | {row['explanation_ms']} | "
                     f"{row['prediction_ms']} | {row['ratio']}× |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "bench", help="exported models, reused")
    parser.add_argument("--predictions", type=int, default=20, help="measured predictions per backend")
    parser.add_argument("--explanations", type=int, default=5, help="measured explanations per variant")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    folder = prepare_exports("classification", args.exports)
    with tempfile.TemporaryDirectory(prefix="tsvision-explain-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        names: Dict[str, str] = {}
        for backend in ("torchscript", "onnx"):
            build_ours(folder, backend, f"classification_{backend}", store, batch_size=1, delay=1, workers=1)
            names[backend] = f"classification_{backend}.mar"
        server = TorchServe(store, Path(tmp) / "work", models=list(names.values()))
        try:
            server.start(timeout=600)
            rows = run(server, make_photo(), args.predictions, args.explanations)
        finally:
            server.stop()
    print(f"{platform.processor() or platform.machine()}, default classification model "
          f"({json.loads((folder / 'settings.json').read_text()).get('architecture', 'mobilenet_v3_small')}), "
          "one client, one request at a time, medians:")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

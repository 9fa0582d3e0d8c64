"""Reduced-scale JPEG decoding (the opt-in ``decode_draft`` setting): speed and fidelity.

``python -m benchmarks.studies.draft_decode [--exports build/bench] [--rounds 15]``: for real photos
(scikit-image's) at several sizes, the time to decode and prepare one JPEG (bytes -> the model's
224×224 input, ``prepare_item`` of the classification task) with and without ``decode_draft``
(interleaved, medians), the PSNR of the model input against the exact path, and the agreement of
the answers (top-1, top-5 in order, the largest score difference) of the exported classification
model, ONNX and TorchScript.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from benchmarks.budget import timed
from benchmarks.inprocess import close, load_task
from benchmarks.models import prepare_exports

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
SIZES = ((640, 480), (1280, 720), (1920, 1080), (4032, 3024))


def photo(name: str, width: int, height: int, quality: int = 90) -> bytes:
    """scikit-image's ``name`` scaled to cover ``width``×``height`` (Lanczos), centre-cropped, as JPEG."""
    import skimage.data

    image = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
    scale = max(width / image.width, height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    buffer = io.BytesIO()
    image.crop((left, top, left + width, top + height)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays, dB (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def answer(worker, data: bytes) -> list:
    response = worker.predict([{"body": data}], [{"body": {"content-type": "image/jpeg"}}])[0]
    if response.status != 200:
        raise RuntimeError(f"answer {response.status}: {str(response.body)[:200]}")
    return json.loads(response.body)


def compare(exact: list, draft: list) -> Dict[str, float]:
    return {"top1": float(exact[0]["index"] == draft[0]["index"]),
            "top5": float([a["index"] for a in exact] == [a["index"] for a in draft]),
            "score_diff": max(abs(a["score"] - b["score"]) for a, b in zip(exact, draft))}


def study(folder: Path, rounds: int) -> List[dict]:
    workers = {(backend, on): load_task(folder, file, {"decode_draft": on, "preprocess_threads": 1}, 1)
               for backend, file in (("onnx", "model.onnx"), ("torchscript", "model.pt")) for on in (False, True)}
    rows = []
    try:
        for width, height in SIZES:
            for name in PHOTOS:
                data = photo(name, width, height)
                exact_task, draft_task = workers["onnx", False].handler.task, workers["onnx", True].handler.task
                exact_input, draft_input = exact_task.prepare_item(data)[0], draft_task.prepare_item(data)[0]
                times = {False: [], True: []}
                for _ in range(3):  # interleaved rounds
                    for on, task in ((False, exact_task), (True, draft_task)):
                        times[on].append(timed(lambda t=task, d=data: t.prepare_item(d), rounds, warm=0))
                row = {"photo": name, "size": f"{width}×{height}", "exact_ms": min(times[False]),
                       "draft_ms": min(times[True]), "psnr_db": psnr(exact_input, draft_input)}
                for backend in ("onnx", "torchscript"):
                    found = compare(answer(workers[backend, False], data), answer(workers[backend, True], data))
                    row.update({f"{backend}_{key}": value for key, value in found.items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for worker in workers.values():
            close(worker)
    return rows


def table(rows: List[dict]) -> str:
    """Per size: medians over the photos of the times and PSNR, and the answers' agreement."""
    lines = ["| photo size | decode + prepare, exact | with `decode_draft` | speed-up | PSNR of the model input "
             "(min / median) | top-1 equal (ONNX, TorchScript) | top-5 equal in order | largest score difference |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size in dict.fromkeys(row["size"] for row in rows):
        group = [row for row in rows if row["size"] == size]
        exact = statistics.median(r["exact_ms"] for r in group)
        draft = statistics.median(r["draft_ms"] for r in group)
        psnrs = [r["psnr_db"] for r in group]
        top1 = [sum(r[f"{b}_top1"] for r in group) for b in ("onnx", "torchscript")]
        top5 = [sum(r[f"{b}_top5"] for r in group) for b in ("onnx", "torchscript")]
        diff = max(max(r["onnx_score_diff"], r["torchscript_score_diff"]) for r in group)
        lines.append(f"| {size} | {exact:.2f} ms | {draft:.2f} ms | {exact / draft:.2f}× | "
                     f"{min(psnrs):.1f} / {statistics.median(psnrs):.1f} dB | {top1[0]:.0f}/{len(group)}, "
                     f"{top1[1]:.0f}/{len(group)} | {top5[0]:.0f}/{len(group)}, {top5[1]:.0f}/{len(group)} | "
                     f"{diff:.4f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per path and round")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = study(prepare_exports("classification", args.exports, False), args.rounds)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

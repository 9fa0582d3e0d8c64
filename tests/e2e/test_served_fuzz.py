"""Fuzz inputs against a real TorchServe (issue 12): bad files of every format, the photo JPEG cut
inside its header among them, mixed with good images in concurrent batches, are each their own
4xx; the good ones are answered as if alone; the worker never restarts. ``-s`` prints the figures."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

import pytest
import requests

from tests.corpus import encode, photo
from tests.fuzz_cases import FORMATS, KINDS, FuzzCase, build_fuzz_cases, truncated_photo_jpeg
from tsvision.serving.errors import RequestError
from tsvision.serving.images import DEFAULT_MAX_PIXELS, decode_image

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]
MODEL = "classification_batched"  # batch size 8, batch delay 300 ms, the default max_pixels


def expected(data: bytes) -> Tuple[int, str]:
    """What the archive must answer: ``decode_image``'s status and error type under its limit."""
    try:
        decode_image(data, DEFAULT_MAX_PIXELS)
    except RequestError as error:
        return error.status, error.kind
    return 200, ""


def bad_cases() -> List[FuzzCase]:
    """One 4xx case of each kind for each format (42; inflated dimensions the 413 kind), and the
    JPEG of issue 12."""
    def wanted(case: FuzzCase) -> bool:
        status = expected(case.data)[0]
        return status == 413 if case.kind == "dimensions" else status != 200

    cases = build_fuzz_cases()
    random.Random(12).shuffle(cases)
    chosen = [next(c for c in cases if c.fmt == fmt and c.kind == kind and wanted(c)) for fmt in FORMATS for kind in KINDS]
    return chosen + [FuzzCase("JPEG baseline", "issue 12", "photo JPEG cut at 200 bytes", truncated_photo_jpeg(200))]


def good_cases() -> List[FuzzCase]:
    sizes = [(320, 240), (640, 480), (200, 300), (500, 333)]
    return [FuzzCase(fmt, "good", f"good {fmt} {w}x{h}", encode(photo(w, h, seed=50 + i), FORMATS[fmt][0], **FORMATS[fmt][2]))
            for i, ((w, h), fmt) in enumerate(zip(sizes * 2, ["JPEG baseline", "PNG", "WebP", "BMP", "JPEG progressive", "GIF", "TIFF", "PNG"]))]


def post(served, case: FuzzCase) -> Tuple[int, dict, int]:
    response = served.predict(MODEL, case.data, content_type=case.content_type)
    return response.status_code, response.json(), int(response.headers.get("X-Batch-Size", 0))


def send_together(served, cases: List[FuzzCase]) -> List[Tuple[int, dict, int]]:
    barrier = threading.Barrier(len(cases))

    def send(case: FuzzCase) -> Tuple[int, dict, int]:
        barrier.wait()
        return post(served, case)

    with ThreadPoolExecutor(len(cases)) as pool:
        return list(pool.map(send, cases))


def test_fuzz_inputs_in_shared_batches_are_their_own_4xx_and_leave_the_worker_alive(served):
    pids = served.worker_pids(MODEL)
    bad, good = bad_cases(), good_cases()
    assert len(bad) == len(FORMATS) * len(KINDS) + 1
    alone = {case.name: post(served, case) for case in bad + good}
    for case in bad:
        status, body, _ = alone[case.name]
        assert (status, body["type"]) == expected(case.data), (case.name, body)
    assert all(alone[case.name][0] == 200 for case in good)

    statuses: Counter = Counter()
    batch_sizes: Counter = Counter()
    rounds = 0
    for start in range(0, len(bad), 5):  # 5 bad and 3 good requests at once
        group = bad[start:start + 5] + [good[(start // 5 + i) % len(good)] for i in range(3)]
        random.Random(start).shuffle(group)
        for case, (status, body, batch_size) in zip(group, send_together(served, group)):
            assert status in (200, 400, 413), (case.name, status, body)  # never 500 or 503
            assert (status, body) == alone[case.name][:2], case.name
            statuses[f"{status} {body.get('type', '') if status != 200 else ''}".strip()] += 1
            batch_sizes[batch_size] += 1
        rounds += 1
    print(f"\n{len(bad)} bad and {len(good)} good inputs, {rounds} rounds of 8 concurrent requests: "
          f"answers {dict(statuses)}; requests per X-Batch-Size {dict(sorted(batch_sizes.items()))}")
    assert statuses["200"] == 3 * rounds and sum(statuses.values()) - statuses["200"] == len(bad)
    assert max(batch_sizes) >= 4, f"concurrent requests were not batched: {dict(batch_sizes)}"

    ping = requests.get(f"{served.inference_url}/ping", headers=served.headers(), timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
    assert served.worker_pids(MODEL) == pids

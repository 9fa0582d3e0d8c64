"""Fuzz inputs over each transport (issue 12): bad files of every format, the photo JPEG cut inside
its header among them, mixed with good images in concurrent batches, are each their own 4xx; the
good ones are answered as if alone; a served worker never restarts. ``-s`` prints the figures.
The in-process-only checks (``decode_image`` on every mutation, all of them through one task, a
bug in ``prepare``) are in tests/unit/test_fuzz.py."""

from __future__ import annotations

import random
from collections import Counter
from typing import List, Tuple

import pytest
import requests

from tests.corpus import encode, photo
from tests.fuzz_cases import FORMATS, KINDS, FuzzCase, build_fuzz_cases, truncated_photo_jpeg
from tests.transports import CONTENT_TYPE, HEADERS, Request
from tsvision.serving.errors import RequestError
from tsvision.serving.images import DEFAULT_MAX_PIXELS, decode_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")
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
    chosen = [next(c for c in cases if c.fmt == fmt and c.kind == kind and wanted(c))
              for fmt in FORMATS for kind in KINDS]
    return chosen + [FuzzCase("JPEG baseline", "issue 12", "photo JPEG cut at 200 bytes", truncated_photo_jpeg(200))]


def good_cases() -> List[FuzzCase]:
    sizes = [(320, 240), (640, 480), (200, 300), (500, 333)]
    return [FuzzCase(fmt, "good", f"good {fmt} {w}x{h}",
                     encode(photo(w, h, seed=50 + i), FORMATS[fmt][0], **FORMATS[fmt][2]))
            for i, ((w, h), fmt) in enumerate(zip(sizes * 2, ["JPEG baseline", "PNG", "WebP", "BMP", "JPEG progressive",
                                                              "GIF", "TIFF", "PNG"]))]


def request(case: FuzzCase) -> Request:
    return Request(case.data, case.content_type)


def test_fuzz_inputs_in_shared_batches_are_their_own_4xx_and_leave_the_worker_alive(transport):
    transport.need(CONTENT_TYPE)  # each case is a file with its content type (image/gif, image/tiff, ...)
    served = transport.server
    pids = served.worker_pids(MODEL) if served is not None else None
    bad, good = bad_cases(), good_cases()
    assert len(bad) == len(FORMATS) * len(KINDS) + 1
    alone = {case.name: transport.one(MODEL, request(case)) for case in bad + good}
    for case in bad:
        answer = alone[case.name]
        assert (answer.status, answer.body["type"]) == expected(case.data), (case.name, answer.body)
    assert all(alone[case.name].status == 200 for case in good)

    statuses: Counter = Counter()
    batch_sizes: Counter = Counter()
    rounds = 0
    for start in range(0, len(bad), 5):  # 5 bad and 3 good requests at once
        group = bad[start:start + 5] + [good[(start // 5 + i) % len(good)] for i in range(3)]
        random.Random(start).shuffle(group)
        for case, answer in zip(group, transport.together(MODEL, [request(c) for c in group])):
            assert answer.status in (200, 400, 413), (case.name, answer.status, answer.body)  # never 500 or 503
            assert (answer.status, answer.body) == (alone[case.name].status, alone[case.name].body), case.name
            kind = answer.body.get("type", "") if answer.status != 200 else ""
            statuses[f"{answer.status} {kind}".strip()] += 1
            batch_sizes[int(answer.headers.get("X-Batch-Size", 0))] += 1
        rounds += 1
    print(f"\n{transport.name}: {len(bad)} bad and {len(good)} good inputs, {rounds} rounds of 8 requests at once: "
          f"answers {dict(statuses)}; requests per X-Batch-Size {dict(sorted(batch_sizes.items()))}")
    assert statuses["200"] == 3 * rounds and sum(statuses.values()) - statuses["200"] == len(bad)
    if HEADERS in transport.carries:  # X-Batch-Size comes back over HTTP (and in-process) only
        assert max(batch_sizes) >= 4, f"concurrent requests were not batched: {dict(batch_sizes)}"

    if served is not None:
        ping = requests.get(f"{served.inference_url}/ping", headers=served.headers(), timeout=10)
        assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
        assert served.worker_pids(MODEL) == pids


def test_issue_12_a_photo_jpeg_cut_inside_its_header_is_400_between_good_images(transport):
    data = truncated_photo_jpeg(200)
    good = [encode(photo(seed=seed), "JPEG") for seed in (1, 2)]
    alone = [transport.send(MODEL, d, "image/jpeg") for d in good]
    batch = transport.together(MODEL, [Request(good[0], "image/jpeg"), Request(data, "image/jpeg"),
                                       Request(good[1], "image/jpeg")])
    assert [a.status for a in batch] == [200, 400, 200]
    assert batch[1].body["type"] == "UnreadableImage" and batch[1].body["code"] == 400
    assert [batch[0].body, batch[2].body] == [a.body for a in alone]

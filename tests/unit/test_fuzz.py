"""Fuzzing the decoding path in-process (issue 12): every mutated file of every accepted format is
its own 200, 400 or 413, alone and inside mixed batches; nothing escapes, nothing over the pixel
limit is decoded; a bug in one request is that request's 500. ``-s`` prints the figures.

These stay in-process: all 1000+ mutations through one task with a small ``max_pixels`` (no
session archive has it), and a bug planted in ``prepare``. The fuzz cases over every transport are
tests/e2e/test_fuzz.py."""

from __future__ import annotations

import random
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterator, List, NamedTuple, Tuple

import pytest
from PIL import ImageFile, TiffImagePlugin, WebPImagePlugin

from tests.checks import check_classification
from tests.corpus import encode, photo
from tests.fuzz_cases import FORMATS, KINDS, SIZE, FuzzCase, build_fuzz_cases, truncated_photo_jpeg, valid_file
from tests.helpers import load_task
from tsvision.serving.errors import RequestError
from tsvision.serving.images import decode_image
from tsvision.serving.service import answer_requests

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # PIL warns about the corrupt TIFF tags it skips
MAX_PIXELS = 100_000  # small, so inflated dimensions meet the limit before anything is decoded
CASES = build_fuzz_cases()
OUTCOMES = ("200", "400 UnreadableImage", "413 ImageTooLarge")


class Outcome(NamedTuple):
    status: int          # 200, the RequestError's status, or 0 for an exception that escaped
    kind: str            # the error type, or the escaped exception's class name
    size: Tuple[int, int] = (0, 0)  # the decoded image's size, for a 200

    @property
    def label(self) -> str:
        return "200" if self.status == 200 else f"{self.status} {self.kind}" if self.status else "escape"


@contextmanager
def loads_recorded() -> Iterator[List[Tuple[int, int]]]:
    """The declared size of every image PIL starts decoding (``load`` is where pixels are decoded)."""
    sizes: List[Tuple[int, int]] = []

    def recording(original):
        def load(self):
            sizes.append(self.size)
            return original(self)
        return load

    with pytest.MonkeyPatch.context() as patch:
        for cls in (ImageFile.ImageFile, TiffImagePlugin.TiffImageFile, WebPImagePlugin.WebPImageFile):
            patch.setattr(cls, "load", recording(cls.__dict__["load"]))
        yield sizes


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Outcome:
    try:
        image = decode_image(data, max_pixels)
    except RequestError as error:
        return Outcome(error.status, error.kind)
    except Exception as error:  # an escape: what issue 12 was about
        return Outcome(0, type(error).__name__)
    assert image.mode == "RGB"
    return Outcome(200, "", image.size)


@pytest.fixture(scope="module")
def direct() -> Tuple[Dict[str, Outcome], List[Tuple[int, int]]]:
    """Every case through ``decode_image``: its outcome, and the sizes PIL started decoding."""
    with loads_recorded() as loaded:
        outcomes = {case.name: decode(case.data) for case in CASES}
    return outcomes, loaded


@pytest.fixture(scope="module")
def classifier(exports):
    return load_task(exports / "classification", "onnx", max_pixels=MAX_PIXELS)


def print_table(outcomes: Dict[str, Outcome]) -> None:
    by_format = {fmt: Counter(outcomes[c.name].label for c in CASES if c.fmt == fmt) for fmt in FORMATS}
    columns = (*OUTCOMES, "escape")
    print(f"\n{'format':<18}{'cases':>6}" + "".join(f"{c:>21}" for c in columns))
    for fmt, counts in [*by_format.items(), ("total", sum(by_format.values(), Counter()))]:
        print(f"{fmt:<18}{sum(counts.values()):>6}" + "".join(f"{counts[c]:>21}" for c in columns))
    print(f"\n{'kind':<18}" + "".join(f"{c:>21}" for c in OUTCOMES))
    for kind in KINDS:
        counts = Counter(outcomes[c.name].label for c in CASES if c.kind == kind)
        print(f"{kind:<18}" + "".join(f"{counts[c]:>21}" for c in OUTCOMES))


def test_the_valid_files_decode():
    for fmt in FORMATS:
        assert decode(valid_file(fmt)) == Outcome(200, "", SIZE), fmt


def test_every_mutation_is_a_200_400_or_413_and_nothing_over_the_limit_is_decoded(direct):
    outcomes, loaded = direct
    print_table(outcomes)
    assert len({c.name for c in CASES}) == len(CASES) >= 1000
    escapes = [(name, o.kind) for name, o in outcomes.items() if o.status == 0]
    assert escapes == [], f"{len(escapes)} exceptions escaped decode_image: {escapes[:10]}"
    assert {o.label for o in outcomes.values()} == set(OUTCOMES)
    # Nothing over the limit is decoded: not returned, and PIL never even started decoding it.
    assert all(w * h <= MAX_PIXELS for w, h in (o.size for o in outcomes.values()))
    assert loaded and all(w * h <= MAX_PIXELS for w, h in loaded), max(loaded, key=lambda s: s[0] * s[1])
    # The mutations reach every path of every format, so this test fails if they stop doing so.
    for fmt in FORMATS:
        cases = [c for c in CASES if c.fmt == fmt]
        assert len(cases) >= 100 and {c.kind for c in cases} == set(KINDS), fmt
        assert {outcomes[c.name].label for c in cases} == set(OUTCOMES), fmt
        assert any(outcomes[c.name].status == 413 for c in cases if c.kind == "dimensions"), \
            f"{fmt}: no inflated size reached the limit"
        assert any(outcomes[c.name].status == 400 for c in cases if c.kind == "truncate-boundary"), fmt


def test_issue_12_a_photo_jpeg_cut_inside_its_header_is_400():
    """decode_image's answer; the same file between good images over every transport: tests/e2e/test_fuzz.py."""
    assert decode(truncated_photo_jpeg(200)) == Outcome(400, "UnreadableImage")


def row(case: FuzzCase) -> Tuple[dict, dict]:
    """The row and headers TorchServe would hand the handler for this case."""
    return {"body": case.data}, {"body": {"content-type": case.content_type}}


def answer_alone(task, case: FuzzCase):
    data, headers = row(case)
    return answer_requests(task, [data], [headers])[0]


def test_fuzz_cases_in_mixed_batches_are_answered_as_if_alone(classifier, direct):
    outcomes, _ = direct
    good = [FuzzCase(fmt, "good", f"good {fmt}", valid_file(fmt, seed=40 + i)) for i, fmt in enumerate(FORMATS)]
    cases = list(CASES)
    random.Random(12).shuffle(cases)
    alone = {case.name: answer_alone(classifier, case) for case in good + cases}
    statuses: Counter = Counter()
    for start in range(0, len(cases), 6):
        batch = cases[start:start + 6] + [good[(start // 6) % len(good)], good[(start // 6 + 3) % len(good)]]
        random.Random(start).shuffle(batch)
        rows, headers = zip(*map(row, batch))
        for case, response in zip(batch, answer_requests(classifier, list(rows), list(headers))):
            assert response.body == alone[case.name].body and response.status == alone[case.name].status, case.name
            if case.kind == "good":
                assert response.status == 200
                check_classification(response.body, classifier.labels)
                continue
            statuses[response.status] += 1
            assert response.status == outcomes[case.name].status, (case.name, response.body)
            if response.status != 200:
                assert response.body["code"] == response.status and response.body["type"] == outcomes[case.name].kind
    print(f"\nthrough answer_requests, {len(cases)} fuzz cases in {-(-len(cases) // 6)} batches "
          f"with 2 good images each: {dict(statuses)}")
    assert set(statuses) == {200, 400, 413}


def test_a_bug_for_one_image_is_a_500_for_that_request_only(classifier, monkeypatch, caplog):
    prepare = classifier.prepare

    def buggy(image):
        if image.size == (161, 97):
            raise ZeroDivisionError("secret detail at 0x7f3a")
        return prepare(image)

    sizes = [(160, 120), (161, 97), (200, 150)]
    images = [encode(photo(*size, seed=i), "PNG") for i, size in enumerate(sizes)]
    alone = [answer_requests(classifier, [{"body": d}])[0] for d in images]
    monkeypatch.setattr(classifier, "prepare", buggy)
    responses = answer_requests(classifier, [{"body": d} for d in images])
    assert [r.status for r in responses] == [200, 500, 200]
    assert [responses[0].body, responses[2].body] == [alone[0].body, alone[2].body]
    body = responses[1].body
    assert set(body) == {"code", "type", "message"} and (body["code"], body["type"]) == (500, "PreprocessError")
    assert "error id" in body["message"] and "0x7f3a" not in body["message"] and "ZeroDivision" not in body["message"]
    error_id = body["message"].rsplit(" ", 1)[-1]
    assert any(error_id in r.getMessage() and "0x7f3a" in (r.exc_text or "") for r in caplog.records)

"""Inputs in-process only: the corpus itself, and a model failure (the runtime patched to raise).
Every input over every transport, in-process included, is tests/e2e/test_inputs.py."""

from __future__ import annotations

import pytest

from tests.corpus import build_corpus, photo
from tests.helpers import jpeg, load_task
from tsvision.serving.service import answer_requests

CORPUS = build_corpus()


@pytest.fixture(scope="module")
def classifier(exports):
    return load_task(exports / "classification", "onnx")


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 25 and len({c.name for c in CORPUS}) == len(CORPUS)
    assert {c.status for c in CORPUS} == {200, 400, 413, 415}


def test_a_model_failure_answers_every_request_with_500(classifier, monkeypatch, caplog):
    def broken(batch):
        raise RuntimeError("out of memory at 0x7f3a")
    monkeypatch.setattr(classifier.runtime, "run", broken)
    responses = answer_requests(classifier, [{"body": jpeg(photo())}, {"body": b""}])
    assert [r.status for r in responses] == [500, 400]
    assert responses[0].body["type"] == "InferenceError"
    # The answer names an error id, never the exception's own text; the log has both.
    message = responses[0].body["message"]
    assert "0x7f3a" not in message and "error id" in message
    error_id = message.rsplit(" ", 1)[-1]
    assert any(error_id in r.getMessage() and "0x7f3a" in (r.exc_text or "") for r in caplog.records)

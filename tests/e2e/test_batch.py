"""``tsvision batch`` on a real two-node Ray cluster on this machine (tests/ray_cluster.py: ``ray start --head``
and a second node joining it, stopped by pid), run as users run it (the command in its own process,
``--address``): its rows equal the session TorchServe's answers for the same archive and files, for our
handlers and a user's (``person_counter``: examples/handlers/people_counter.py), with a job-wide option
(``top_k``, sent to TorchServe as a query parameter of ``/invocations``); bad files are rows with exact
counts; and a job killed half-way (SIGKILL by pid once parts exist) resumes with ``--resume``, every path
answered exactly once."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.checks import assert_same_answer
from tests.helpers import REPO, jpeg, png
from tests.ray_cluster import RayCluster
from tests.scenes import bright_box_scene
from tsvision.tools.batch.parts import part_files, read_rows
from tsvision.tools.batch.rows import content_type


@pytest.fixture(scope="module")
def cluster():
    with RayCluster(nodes=2, cpus=3) as started:
        yield started


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory) -> Path:
    """Real photos (JPEG and PNG), toy scenes, and 3 files that are not images."""
    folder = tmp_path_factory.mktemp("batch_images")
    for name, image in photos.items():
        (folder / f"{name}.jpg").write_bytes(jpeg(image))
        (folder / f"{name}.png").write_bytes(png(image.resize((image.width // 2, image.height // 2))))
    for width, height in ((640, 480), (777, 333)):
        (folder / f"scene-{width}x{height}.png").write_bytes(png(bright_box_scene(width, height)[0]))
    (folder / "notes.jpg").write_bytes(b"a text file named like a JPEG")
    (folder / "cut.jpg").write_bytes(jpeg(photos["coffee"])[:3000])
    (folder / "empty.png").write_bytes(b"")
    return folder


def batch(cluster: RayCluster, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tsvision", "batch", "--address", cluster.address, *arguments],
                            cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, err = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-3000:]
    return out


def served_answer(served, name: str, path: Path, options: dict) -> requests.Response:
    headers = {"Content-Type": content_type(str(path)), **served.headers("inference")}
    url = (f"{served.inference_url}/invocations" if options else f"{served.inference_url}/predictions/{name}")
    params = {"model_name": name, **options} if options else None
    return requests.post(url, params=params, data=path.read_bytes(), headers=headers, timeout=120)


@pytest.mark.parametrize("name, task, options", [("classification_onnx", "classification", {"top_k": 2}),
                                                 ("toy_detection_onnx", "detection", {}),
                                                 ("person_counter", "person_counter", {})])
def test_rows_equal_the_served_answers(name, task, options, served, model_store, cluster, images, tmp_path):
    out = tmp_path / "out"
    sets = [f"--set={key}={value}" for key, value in options.items()]
    said = finish(batch(cluster, "--archive", str(model_store / f"{name}.mar"), "--images", str(images),
                        "--output", str(out), "--concurrency", "2", "--batch-size", "4", *sets))
    files = sorted(images.iterdir())
    rows = {row["path"]: row for row in read_rows(out)}
    assert sorted(rows) == [str(f) for f in files]
    assert f"images: {len(files)} in " in said and "errors: 3 (" in said, said
    statuses = collections.Counter(row["status"] for row in rows.values())
    assert statuses == {200: len(files) - 3, 400: 3}, statuses
    for path in files:
        row, response = rows[str(path)], served_answer(served, name, path, options)
        assert row["status"] == response.status_code, (path.name, row, response.text)
        if response.status_code != 200:
            assert (row["error_type"], row["error_message"]) == (response.json()["type"], response.json()["message"])
            assert row["answer"] is None
            continue
        answer, expected = json.loads(row["answer"]), response.json()
        if task == "person_counter":  # the user's handler's answer: a count and boxes with their areas
            assert answer["count"] == expected["count"] and set(answer) == set(expected) == {"count", "detections"}
            assert_same_answer("detection", answer["detections"], expected["detections"])
        else:
            assert_same_answer(task, answer, expected)
        if options:
            assert len(answer) == options["top_k"]


def test_a_killed_job_resumes_and_answers_every_path_once(served, model_store, cluster, photos, tmp_path):
    """SIGKILL the job by pid once parts exist; ``--resume`` answers only what the parts lack."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(48):
        image = list(photos.values())[index % len(photos)]
        side = 96 + 8 * index
        (folder / f"{index:02d}.jpg").write_bytes(jpeg(image.resize((side, side * image.height // image.width))))
    (folder / "bad.jpg").write_bytes(b"not an image")
    # Ray may hand the driver every answer in one burst on a busy machine, so that the job has written
    # all its parts before the kill lands: then it is run again, into a new folder, up to three times.
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        arguments = ["--archive", str(model_store / "classification_onnx.mar"), "--images", str(folder),
                     "--output", str(out), "--concurrency", "1", "--batch-size", "2", "--part-rows", "2"]
        job = batch(cluster, *arguments)
        try:
            deadline = time.monotonic() + 240
            while not part_files(out) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if job.poll() is None:  # else it ended before the kill: all its rows are written, run again
                os.kill(job.pid, signal.SIGKILL)
                job.wait(timeout=30)
            ended = job.stderr.read()[-2000:]
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
            job.stdout.close()
            job.stderr.close()
        before = read_rows(out)
        if len(before) < 49:
            break
    assert 0 < len(before) < 49, (len(before), ended)
    said = finish(batch(cluster, *arguments, "--resume"))
    assert f"skipped: {len(before)} already answered" in said, said
    rows = read_rows(out)
    counted = collections.Counter(row["path"] for row in rows)
    assert sorted(counted) == sorted(str(p) for p in folder.iterdir()) and set(counted.values()) == {1}
    assert collections.Counter(row["status"] for row in rows) == {200: 48, 400: 1}
    one = next(row for row in rows if row["path"].endswith("07.jpg"))
    expected = served_answer(served, "classification_onnx", folder / "07.jpg", {}).json()
    assert_same_answer("classification", json.loads(one["answer"]), expected)
    assert not list(out.glob(".part-*"))  # the killed job's unfinished part was removed


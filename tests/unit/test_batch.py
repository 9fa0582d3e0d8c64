"""``tsvision batch`` without Ray: the inputs it lists, the rows its model actors build (the callable class
called in-process, exactly as ``map_batches`` calls it), the parts it writes and reads back for
``--resume``, and its command-line errors. The job on a real two-node Ray cluster, compared with the
served archive, is tests/e2e/test_batch.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import EXAMPLE_HANDLER, TOY_SETTINGS, jpeg, png
from tests.scenes import bright_box_scene
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.batch import cli as batch_cli
from tsvision.tools.batch.inputs import InputError, list_images, unique
from tsvision.tools.batch.job import JobConfig, JobError, plan
from tsvision.tools.batch.model import ArchiveError, ArchiveModel, check_archive
from tsvision.tools.batch.parts import PartWriter, answered_paths, read_rows, remove_unfinished
from tsvision.tools.batch.progress import Progress
from tsvision.tools.batch.reading import read_files
from tsvision.tools.batch.rows import content_type


def touch(path: Path, data: bytes = b"x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path.resolve())


def test_a_folder_lists_every_file_below_it_sorted_without_hidden_ones(tmp_path):
    expected = [touch(tmp_path / "a.jpg"), touch(tmp_path / "b" / "c.png"), touch(tmp_path / "b" / "d.txt")]
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / ".cache" / "e.jpg")
    assert list_images(str(tmp_path)) == expected
    assert list_images(f"file://{tmp_path}") == [f"file://{p}" for p in expected]  # through pyarrow's filesystem


def test_a_glob_a_text_list_and_a_parquet_list(tmp_path):
    a, b, c = (touch(tmp_path / "photos" / name) for name in ("a.jpg", "b.jpg", "c.png"))
    assert list_images(str(tmp_path / "photos" / "*.jpg")) == [a, b]
    assert list_images(str(tmp_path / "**" / "*.png")) == [c]
    listing = tmp_path / "lists" / "paths.txt"
    listing.parent.mkdir()
    listing.write_text(f"# photos\n../photos/b.jpg\n\n{a}\n  s3://bucket/key.jpg  \n")
    assert list_images(str(listing)) == [b, a, "s3://bucket/key.jpg"]  # relative to the list file's folder
    pq.write_table(pa.table({"id": [1, 2], "uri": [c, "photos/a.jpg"]}), tmp_path / "paths.parquet")
    assert list_images(str(tmp_path / "paths.parquet"), column="uri") == [c, a]
    with pytest.raises(InputError, match="no column 'path'.*--column"):
        list_images(str(tmp_path / "paths.parquet"))
    with pytest.raises(InputError, match="matches no file"):
        list_images(str(tmp_path / "*.gif"))
    with pytest.raises(InputError, match="no such folder or file"):
        list_images(str(tmp_path / "absent"))
    assert unique([a, b, a, c, b]) == ([a, b, c], 2)


def test_reading_gives_bytes_or_the_reason_per_file(tmp_path):
    good = touch(tmp_path / "a.jpg", b"\xff\xd8bytes")
    read = read_files({"path": np.array([good, str(tmp_path / "gone.jpg"), f"file://{good}"], dtype=object)})
    assert list(read["data"]) == [b"\xff\xd8bytes", None, b"\xff\xd8bytes"]
    assert read["read_error"][0] == "" and read["read_error"][1].startswith("FileNotFoundError: ")
    assert content_type("x/a.JPG") == "image/jpeg" and content_type("a.png") == "image/png"
    assert content_type("notes.txt") == content_type("noextension") == "application/octet-stream"


@pytest.fixture(scope="module")
def person_counter(toy_exports, tmp_path_factory) -> Path:
    """A user's handler file (examples/handlers/people_counter.py) archived on the toy detector."""
    store = tmp_path_factory.mktemp("batch_store")
    (store / "labels.json").write_text(json.dumps(["background", "person"]))
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in TOY_SETTINGS["detection"].items()]
    assert archive_main(["--model", str(toy_exports / "detection" / "model.onnx"), "--task", "detection",
                         "--labels", str(store / "labels.json"), "--name", "person_counter", "--handler",
                         str(EXAMPLE_HANDLER), "--store", str(store), *overrides]) == 0
    return store / "person_counter.mar"


def test_the_actor_answers_with_the_archives_own_handler_and_bad_images_are_rows(person_counter, tmp_path):
    """20 files, 10% not images, one more path gone before it was read: exact counts, a failed job never."""
    truths, paths = {}, []
    for index in range(18):
        width, height = 300 + 37 * index, 200 + 23 * (index % 5)
        scene, truth = bright_box_scene(width, height)
        name = tmp_path / f"scene{index:02d}.{'png' if index % 2 else 'jpg'}"
        name.write_bytes(png(scene) if index % 2 else jpeg(scene, quality=95))
        truths[str(name)] = truth
        paths.append(str(name))
    paths += [touch(tmp_path / "notes.jpg", b"this is text, not a JPEG"),
              touch(tmp_path / "cut.png", png(bright_box_scene(320, 240)[0])[:200]), str(tmp_path / "gone.png")]
    model = ArchiveModel(str(person_counter))
    rows = []
    for start in range(0, len(paths), 8):  # batches as map_batches hands them over
        answered = model(read_files({"path": np.array(paths[start:start + 8], dtype=object)}))
        rows += [{name: answered[name][i] for name in answered} for i in range(len(answered["path"]))]
    assert [r["path"] for r in rows] == paths
    progress = Progress(len(paths))
    progress.add(rows)
    assert dict(progress.statuses) == {200: 18, 400: 2, 0: 1}
    assert dict(progress.errors) == {"400 UnreadableImage": 2, "0 FileNotFoundError": 1}
    for row in rows[:18]:
        answer = json.loads(row["answer"])  # the user's handler's answer: its count and the areas it adds
        assert row["error_type"] is None and answer["count"] == 1 and len(answer["detections"]) == 1
        detection = answer["detections"][0]
        assert detection["label"] == "person" and max(abs(a - b) for a, b in
                                                      zip(detection["box"], truths[row["path"]])) <= 2
        x1, y1, x2, y2 = detection["box"]
        assert detection["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=0.01)
    assert all(r["answer"] is None and r["error_message"] for r in rows[18:])


def test_an_archive_that_cannot_run_is_refused_before_a_job(tmp_path):
    (tmp_path / "text.mar").write_text("not a zip")
    with pytest.raises(ArchiveError, match="not a .mar"):
        check_archive(tmp_path / "text.mar")


def test_parts_are_whole_and_resume_skips_what_they_answered(tmp_path):
    rows = [{"path": f"/p/{i}.jpg", "status": 200, "answer": json.dumps([{"label": "cat", "score": 0.5}]),
             "error_type": None, "error_message": None} for i in range(3)]
    rows.append({"path": "/p/bad.jpg", "status": 400, "answer": None, "error_type": "UnreadableImage",
                 "error_message": "cannot identify image file"})
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / fmt
        writer = PartWriter(out, fmt)
        writer.write(rows[:2])
        writer.write(rows[2:])
        assert [p.name.endswith(f"-00000.{fmt}") for p in writer.parts] == [True, False]
        assert sorted(read_rows(out), key=lambda r: r["path"]) == sorted(rows, key=lambda r: r["path"])
        assert answered_paths(out) == {r["path"] for r in rows}
    first = json.loads((tmp_path / "jsonl").glob("*-00000.jsonl").__next__().read_text().splitlines()[0])
    assert first["answer"] == [{"label": "cat", "score": 0.5}]  # JSON Lines: the answer itself, not its text
    (tmp_path / "jsonl" / ".part-x-00009.jsonl.tmp").write_text('{"path": "/p/half')  # a job killed mid-write
    assert answered_paths(tmp_path / "jsonl") == {r["path"] for r in rows}
    assert remove_unfinished(tmp_path / "jsonl") == 1

    images = tmp_path / "images"
    listed = [touch(images / name) for name in ("a.jpg", "b.jpg", "c.jpg")]
    PartWriter(tmp_path / "out").write([dict(rows[0], path=listed[1])])
    config = JobConfig(archive=Path("unused.mar"), source=str(images), output=tmp_path / "out")
    with pytest.raises(JobError, match="already holds 1 parts: --resume"):
        plan(config)
    config.resume = True
    assert plan(config) == ([listed[0], listed[2]], 1, 0)


def test_the_command_line_refuses_what_it_cannot_do(tmp_path, capsys):
    archive = tmp_path / "a.mar"
    archive.write_text("not a zip")
    common = ["--archive", str(archive), "--images", str(tmp_path), "--output", str(tmp_path / "out")]
    assert batch_cli.main([*common, "--set", "format=png"]) == 2
    assert batch_cli.main([*common, "--set", "topk=3"]) == 2
    assert batch_cli.main(common) == 2
    assert batch_cli.main([*common[:2], "--images", str(tmp_path / "absent"), *common[4:]]) == 2
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "tsvision batch: error: --set format: a batch row holds the JSON answer, not a picture"
    assert said[1].startswith("tsvision batch: error: --set topk: not a per-request option; options: ")
    assert "top_k" in said[1]
    assert said[2].endswith("a.mar: not a .mar (zip) archive") and "no such folder or file" in said[3]
    assert len(said) == 4

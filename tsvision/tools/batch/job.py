"""A batch job on Ray Data: list the images, skip those already answered (``--resume``), read the files on
CPU tasks, answer them on model actors (``ArchiveModel``: one archive load per actor), and write the rows
in parts as they arrive, with a progress line.

Without an address a local Ray starts and stops with the job; with one (``ray start --head`` on one
machine, ``ray start --address HEAD:PORT`` on the others) the job joins that cluster and leaves it running.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from tsvision.tools.batch.inputs import list_images, unique
from tsvision.tools.batch.model import ArchiveModel, check_archive
from tsvision.tools.batch.parts import PartWriter, answered_paths, part_files, remove_unfinished
from tsvision.tools.batch.progress import Progress
from tsvision.tools.batch.reading import read_files
from tsvision.tools.batch.rows import FIELDS

READ_CPUS = 0.25  # reading files is I/O: the read tasks leave the CPUs to the model actors
# Model actors are not restarted: a restarted actor cannot count on its constructor's arguments (the archive)
# still being in the object store, which Ray says on stderr (ray#53727). A dead actor fails the job; --resume.
NO_RESTARTS = {"max_restarts": 0}
QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


class JobError(ValueError):
    """The job cannot start as asked (the output holds parts without --resume, ...)."""


@dataclass
class JobConfig:
    archive: Path
    source: str
    output: Path
    format: str = "jsonl"
    options: Dict[str, Any] = field(default_factory=dict)  # per-request options for every image
    resume: bool = False
    column: str = "path"  # the Parquet list's column of paths
    address: Optional[str] = None  # an existing Ray cluster; None: a local Ray for this job
    num_cpus: float = 1.0  # per model actor
    num_gpus: float = 0.0  # per model actor
    concurrency: int = 1  # model actors
    batch_size: int = 8  # images per handler call
    part_rows: int = 1000  # rows per output part (a part is also written every part_seconds)
    part_seconds: float = 30.0
    verbose: bool = False  # Ray's own logs and progress bars


@dataclass
class JobResult:
    progress: Progress
    skipped: int  # already answered in the output (--resume)
    repeats: int  # repeated input paths dropped
    parts: List[Path]


def plan(config: JobConfig) -> tuple:
    """(paths to answer, how many are already answered, how many repeats were dropped); nothing is written."""
    paths, repeats = unique(list_images(config.source, config.column))
    existing = part_files(config.output)
    if existing and not config.resume:
        raise JobError(f"--output {config.output} already holds {len(existing)} parts: --resume to answer only "
                       "the paths they lack, or another --output")
    done = answered_paths(config.output) if config.resume else set()
    todo = [path for path in paths if path not in done]
    return todo, len(paths) - len(todo), repeats


def run_job(config: JobConfig, stream: Optional[TextIO] = None) -> JobResult:
    """Run the job; ``stream`` gets the progress line. Bad images are rows, never a failed job."""
    todo, skipped, repeats = plan(config)
    check_archive(config.archive)
    if config.resume:
        remove_unfinished(config.output)
    writer = PartWriter(config.output, config.format)
    progress = Progress(len(todo), stream)
    if todo:
        _run_on_ray(config, todo, writer, progress)
    if stream is not None and todo and progress.shown != progress.done:
        progress.show()
    return JobResult(progress, skipped, repeats, writer.parts)


def _run_on_ray(config: JobConfig, todo: List[str], writer: PartWriter, progress: Progress) -> None:
    if config.address is None:  # a Ray of one node for this job: on the loopback only, as Ray does on a laptop
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # (read when ray is imported)
    import ray  # ray[data] is the batch extra: only this command needs it

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.address, include_dashboard=False, log_to_driver=config.verbose,
                 logging_level=logging.INFO if config.verbose else logging.ERROR)
    try:
        _quiet(ray, config.verbose)
        archive = ray.put(Path(config.archive).read_bytes())
        blocks = max(1, min(2000, math.ceil(len(todo) / max(config.batch_size * 4, 16))))
        dataset = ray.data.from_items([{"path": path} for path in todo], override_num_blocks=blocks)
        dataset = dataset.map_batches(read_files, batch_size=config.batch_size, num_cpus=READ_CPUS,
                                      batch_format="numpy")
        with warnings.catch_warnings():  # Ray 2.60 names no parameter for max_restarts, and deprecates the ways
            warnings.simplefilter("ignore", DeprecationWarning)  # to pass it (pinned: the batch extra)
            dataset = dataset.map_batches(ArchiveModel, fn_constructor_args=([archive], config.options),
                                          batch_size=config.batch_size, batch_format="numpy",
                                          compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                                          num_cpus=config.num_cpus, num_gpus=config.num_gpus or None,
                                          **NO_RESTARTS)
        buffer: List[Dict[str, Any]] = []
        flushed = time.monotonic()
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = _rows(batch)
            progress.add(rows)
            buffer.extend(rows)
            if len(buffer) >= config.part_rows or time.monotonic() - flushed >= config.part_seconds:
                writer.write(buffer)
                buffer, flushed = [], time.monotonic()
        if buffer:
            writer.write(buffer)
    finally:
        if started_here:
            ray.shutdown()


def _rows(batch: Dict[str, Any]) -> List[Dict[str, Any]]:
    count = len(batch["path"])
    return [{name: _plain(batch[name][i]) for name in FIELDS} for i in range(count)]


def _plain(value: Any) -> Any:
    """numpy scalars as plain Python values; NaN as None (a column of nulls arrives as float NaN)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _quiet(ray, verbose: bool) -> None:
    """Ray Data's progress bars and start-up lines only with --verbose: the job prints its own progress."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    if hasattr(context, "print_on_execution_start"):
        context.print_on_execution_start = verbose
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)

"""Run an archive over many images on Ray Data: one row per image (path, status, answer or error).

  tsvision batch --archive model_store/detection_onnx.mar --images photos/ --output out/
  tsvision batch --archive person_counter.mar --images 'photos/**/*.jpg' --output out/ --format parquet
  tsvision batch --archive detection_onnx.mar --images paths.txt --output out/ --set score_threshold=0.3
  tsvision batch ... --address 10.0.0.1:6379 --concurrency 8 --num-cpus 2     # on a running Ray cluster
  tsvision batch ... --resume                                                   # after a stopped job

--images: a folder (every file under it), a glob (quote it), a .txt file with one path per line, or a
.parquet file with a column of paths (--column); s3:// gs:// file:// URIs through pyarrow's filesystems.
Each image is answered by the archive's own handler as TorchServe would answer it; a file that is not an
image is a row with its error (e.g. 400 UnreadableImage), never a failed job. Rows are written in parts
under --output as they come; --resume skips the paths the parts already hold. docs/batch.md says more.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from tsvision.serving.payloads import OPTION_NAMES
from tsvision.tools.batch.inputs import InputError
from tsvision.tools.batch.job import JobConfig, JobError, run_job
from tsvision.tools.batch.model import ArchiveError
from tsvision.tools.batch.parts import FORMATS
from tsvision.tools.command import (
    UsageError,
    entry_point,
    existing_file,
    key_values,
    non_negative_number,
    positive_int,
    writable_folder,
)
from tsvision.tools.command import parser as command_parser

PICTURE_OPTIONS = ("format",)  # a batch row holds JSON, never a picture


def job_options(pairs: List[str]) -> dict:
    """``--set`` pairs as per-request options; a name that is not one (docs/options.md) is a usage error."""
    options = key_values(pairs)
    allowed = sorted(OPTION_NAMES - set(PICTURE_OPTIONS))
    for name in options:
        if name in PICTURE_OPTIONS:
            raise UsageError(f"--set {name}: a batch row holds the JSON answer, not a picture")
        if name not in OPTION_NAMES:
            raise UsageError(f"--set {name}: not a per-request option; options: {', '.join(allowed)}")
    return options


@entry_point("tsvision batch")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision batch", __doc__)
    parser.add_argument("--archive", type=existing_file, required=True, help="the .mar to run")
    parser.add_argument("--images", required=True, help="a folder, a glob, a .txt or .parquet list of paths")
    parser.add_argument("--column", default="path", help="the column of paths in a .parquet list")
    parser.add_argument("--output", type=Path, required=True, help="folder the parts are written to")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="the parts' format")
    parser.add_argument("--resume", action="store_true", help="skip the paths --output's parts already hold")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a per-request option for every image (docs/options.md), e.g. --set top_k=3")
    parser.add_argument("--address", help="a running Ray cluster (HEAD:PORT); default: a local Ray for this job")
    parser.add_argument("--concurrency", type=positive_int, default=1, help="model actors")
    parser.add_argument("--num-cpus", type=non_negative_number, default=1.0, help="CPUs per model actor")
    parser.add_argument("--num-gpus", type=non_negative_number, default=0.0, help="GPUs per model actor")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per handler call")
    parser.add_argument("--part-rows", type=positive_int, default=1000,
                        help="rows per output part (a part is also written every 30 s)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--verbose", action="store_true", help="Ray's own logs and progress bars")
    args = parser.parse_args(argv)

    options = job_options(args.options)
    writable_folder(args.output, "--output")
    config = JobConfig(archive=args.archive, source=args.images, output=args.output, format=args.format,
                       options=options, resume=args.resume, column=args.column, address=args.address,
                       num_cpus=args.num_cpus, num_gpus=args.num_gpus, concurrency=args.concurrency,
                       batch_size=args.batch_size, part_rows=args.part_rows, verbose=args.verbose)
    try:
        result = run_job(config, None if args.quiet else sys.stderr)
    except (InputError, JobError, ArchiveError) as error:
        raise UsageError(str(error)) from None
    where = f" -> {args.output} ({len(result.parts)} new parts, {args.format})"
    print(result.progress.summary(result.skipped, result.repeats, where))
    return 0

"""The images of a job: a folder, a glob, or a text/Parquet file of paths, as one ordered list of paths.

Plain paths are local files (every node of a cluster must see them: a shared folder); ``scheme://``
URIs (``s3://``, ``gs://``, ``file://``) go through pyarrow's filesystems, on every node alike.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, List, Tuple

LIST_SUFFIXES = (".txt", ".lst", ".csv")
PARQUET_SUFFIXES = (".parquet", ".pq")


class InputError(ValueError):
    """The input cannot be listed (a missing folder, a list file without its column, ...)."""


def is_uri(path: str) -> bool:
    return "://" in path


def list_images(source: str, column: str = "path") -> List[str]:
    """The paths ``source`` names, in order: every file under a folder (sorted, hidden files skipped),
    a glob's files, the lines of a text file, or ``column`` of a Parquet file."""
    if is_uri(source):
        return _list_uri(source, column)
    path = Path(source)
    if path.is_dir():
        return sorted(str(p.resolve()) for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    if path.is_file() and path.suffix.lower() in PARQUET_SUFFIXES:
        return _absolute(_parquet_column(str(path), column, None), path.parent)
    if path.is_file():
        return _absolute(_lines(path.read_text(encoding="utf-8").splitlines()), path.parent)
    if glob.has_magic(source):
        found = sorted(str(Path(p).resolve()) for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        if not found:
            raise InputError(f"{source}: the pattern matches no file")
        return found
    raise InputError(f"{source}: no such folder or file (a folder, a glob, a .txt or .parquet list of paths)")


def unique(paths: List[str]) -> Tuple[List[str], int]:
    """``paths`` in order without repeats, and how many repeats were dropped."""
    kept = list(dict.fromkeys(paths))
    return kept, len(paths) - len(kept)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _lines(lines: Iterable[str]) -> List[str]:
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _absolute(paths: List[str], base: Path) -> List[str]:
    """Relative local paths are relative to the list file's folder; URIs stay as they are."""
    return [p if is_uri(p) or os.path.isabs(p) else str((base / p).resolve()) for p in paths]


def _parquet_column(path: str, column: str, filesystem) -> List[str]:
    import pyarrow.parquet as pq  # pyarrow comes with ray[data], the batch extra

    try:
        table = pq.read_table(path, columns=[column], filesystem=filesystem)
    except (KeyError, ValueError) as error:
        names = pq.read_schema(path, filesystem=filesystem).names if filesystem is None else "?"
        raise InputError(f"{path}: no column {column!r} (columns: {names}); --column names it") from error
    return [str(value) for value in table.column(column).to_pylist() if value]


def _list_uri(source: str, column: str) -> List[str]:
    """A folder (prefix), a list file or a glob-free file behind a URI, through pyarrow's filesystems."""
    from pyarrow import fs  # pyarrow comes with ray[data], the batch extra

    filesystem, root = fs.FileSystem.from_uri(source)
    scheme = source.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.Directory:
        found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        return sorted(f"{scheme}://{f.path}" if scheme != "file" else f"file://{f.path}" for f in found
                      if f.type == fs.FileType.File and not _hidden(Path(f.path).relative_to(root)))
    if info.type != fs.FileType.File:
        raise InputError(f"{source}: no such folder or file")
    if root.lower().endswith(PARQUET_SUFFIXES):
        return _parquet_column(root, column, filesystem)
    with filesystem.open_input_stream(root) as stream:
        return _lines(stream.read().decode("utf-8").splitlines())

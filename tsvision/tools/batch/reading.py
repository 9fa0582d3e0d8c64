"""Reading the images' bytes, on Ray Data's CPU tasks: local files, or URIs through pyarrow's filesystems.

The bytes go to the archive's handler as they are: it decodes them with its own ``preprocess``, as the
served archive does, so a file that is not an image is that row's 400, never a failed job."""

from __future__ import annotations

import functools
from typing import Any, Dict, List

import numpy as np

from tsvision.tools.batch.inputs import is_uri


def read_bytes(path: str) -> bytes:
    """The file's bytes (``OSError`` when it cannot be read)."""
    if is_uri(path):
        filesystem, inner = _filesystem(path)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    with open(path, "rb") as file:
        return file.read()


def read_files(batch: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """``map_batches`` step: ``path`` -> ``path``, ``data`` (bytes or None) and, when unreadable,
    ``read_error`` ("Type: message", or "" when read: a column of nulls would arrive as NaN)."""
    paths = [str(path) for path in batch["path"]]
    data: List[Any] = []
    errors: List[Any] = []
    for path in paths:
        try:
            data.append(read_bytes(path))
            errors.append("")
        except OSError as error:
            data.append(None)
            errors.append(f"{type(error).__name__}: {error.strerror or error}")
    return {"path": np.array(paths, dtype=object), "data": np.array(data, dtype=object),
            "read_error": np.array(errors, dtype=object)}


@functools.lru_cache(maxsize=16)
def _filesystem_for(prefix: str):
    from pyarrow import fs  # pyarrow comes with ray[data], the batch extra

    return fs.FileSystem.from_uri(prefix)[0]


def _filesystem(uri: str):
    """One pyarrow filesystem per scheme and bucket (S3 clients are slow to make), and the path inside it."""
    from pyarrow import fs  # pyarrow comes with ray[data], the batch extra

    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return fs.LocalFileSystem(), rest
    bucket = rest.split("/", 1)[0]
    return _filesystem_for(f"{scheme}://{bucket}"), rest

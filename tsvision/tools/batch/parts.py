"""The output folder: rows written in parts (``part-<run>-<n>.jsonl`` or ``.parquet``), each written to a
hidden temporary file and renamed when complete, so a job stopped at any moment leaves only whole parts;
``--resume`` reads the parts back and skips the paths they answered.

JSON Lines: one object per row, ``answer`` the answer itself (JSON). Parquet: the same columns,
``answer`` as JSON text, ``status`` int32."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Set

FORMATS = ("jsonl", "parquet")


def part_files(folder: Path) -> List[Path]:
    """The complete parts in ``folder``, of either format."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for fmt in FORMATS for p in folder.glob(f"part-*.{fmt}"))


def read_rows(folder: Path) -> List[Dict[str, Any]]:
    """Every row of every part (``answer`` as JSON text in both formats)."""
    found: List[Dict[str, Any]] = []
    for part in part_files(folder):
        if part.suffix == ".jsonl":
            for line in part.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("answer") is not None:
                        row["answer"] = json.dumps(row["answer"])
                    found.append(row)
        else:
            import pyarrow.parquet as pq  # pyarrow comes with ray[data], the batch extra

            found.extend(pq.read_table(part).to_pylist())
    return found


def answered_paths(folder: Path) -> Set[str]:
    """The paths the parts in ``folder`` already hold a row for (answer or error)."""
    return {row["path"] for row in read_rows(folder)}


def remove_unfinished(folder: Path) -> int:
    """Delete the temporary files a stopped job left (parts it never completed); how many."""
    leftovers = list(Path(folder).glob(".part-*.tmp")) if Path(folder).is_dir() else []
    for leftover in leftovers:
        leftover.unlink()
    return len(leftovers)


class PartWriter:
    """Writes rows into numbered parts of one run, each complete or absent."""

    def __init__(self, folder: Path, fmt: str = "jsonl") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        self.folder, self.format = Path(folder), fmt
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.parts: List[Path] = []

    def write(self, rows: Iterable[Dict[str, Any]]) -> Path:
        rows = list(rows)
        final = self.folder / f"part-{self.run}-{len(self.parts):05d}.{self.format}"
        temporary = self.folder / f".{final.name}.tmp"
        if self.format == "jsonl":
            with open(temporary, "w", encoding="utf-8") as file:
                for row in rows:
                    shown = dict(row, answer=None if row["answer"] is None else json.loads(row["answer"]))
                    file.write(json.dumps(shown, ensure_ascii=False) + "\n")
                file.flush()
                os.fsync(file.fileno())
        else:
            _write_parquet(rows, temporary)
        os.replace(temporary, final)
        self.parts.append(final)
        return final


def _write_parquet(rows: List[Dict[str, Any]], path: Path) -> None:
    import pyarrow as pa  # pyarrow comes with ray[data], the batch extra
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("status", pa.int32()), ("answer", pa.string()),
                        ("error_type", pa.string()), ("error_message", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)

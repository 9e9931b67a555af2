# SPDX-License-Identifier: AGPL-3.0-or-later
"""Local JSON-lines files (one file or a folder searched recursively): one JSON object per line.

Blank lines are ignored; row ``i`` is the ``i``-th non-blank line. The first read of a file indexes
the byte offset of every row, so later row-range reads seek straight to their first row. A file's
columns are the keys of its first row; a later row that lacks a key reads as null there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from lila_data.errors import DataError
from lila_data.source_base import Source

JSONL_SUFFIXES = (".jsonl", ".json")


class JsonlSource(Source):
    """Documents in local JSON-lines files. ``path`` is a file or a folder (searched recursively)."""

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec)
        if not path.exists():
            raise DataError(f"source {spec!r}: {path} does not exist; check the path in the spec")
        if path.is_dir():
            self._root = path
            files = sorted(
                p.relative_to(path).as_posix()
                for p in path.rglob("*")
                if p.is_file() and p.suffix in JSONL_SUFFIXES
            )
            if not files:
                raise DataError(
                    f"source {spec!r}: folder {path} holds no {'/'.join(JSONL_SUFFIXES)} files; point the spec "
                    "at a folder of JSON-lines files or use parquet:PATH"
                )
        else:
            self._root = path.parent
            files = [path.name]
        self._files = files
        self._offsets: dict[str, list[int]] = {}
        self._columns: dict[str, list[str]] = {}

    def file_names(self) -> list[str]:
        return list(self._files)

    def _index(self, name: str) -> list[int]:
        if name in self._offsets:
            return self._offsets[name]
        self.check_file(name)
        path = self._root / name
        offsets: list[int] = []
        first: bytes | None = None
        with path.open("rb") as handle:
            position = 0
            for line in handle:
                if line.strip():
                    offsets.append(position)
                    if first is None:
                        first = line
                position += len(line)
        if not offsets:
            raise DataError(
                f"{self.where(name)}: the file is empty (no JSON lines); re-download it or delete it"
            )
        row = self._parse(name, first or b"", 0)
        self._columns[name] = list(row)
        self._offsets[name] = offsets
        return offsets

    def _parse(self, name: str, line: bytes, row: int) -> dict:
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{self.where(name)}: row {row} is not valid JSON ({exc}); fix or remove that line"
            ) from exc
        if not isinstance(value, dict):
            raise DataError(
                f"{self.where(name)}: row {row} is a JSON {type(value).__name__}, not an object; each line "
                'must be an object like {"id": ..., "text": ...}'
            )
        return value

    def num_rows(self, name: str) -> int:
        return len(self._index(name))

    def column_names(self, name: str) -> list[str]:
        self._index(name)
        return self._columns[name]

    def _read(
        self, name: str, row_start: int, row_stop: int, columns: Sequence[str], batch_rows: int
    ) -> Iterator[pa.Table]:
        offsets = self._index(name)
        with (self._root / name).open("rb") as handle:
            handle.seek(offsets[row_start])
            row = row_start
            while row < row_stop:
                rows = []
                while row < row_stop and len(rows) < batch_rows:
                    line = handle.readline()
                    if not line.strip():
                        continue
                    rows.append(self._parse(name, line, row))
                    row += 1
                try:
                    yield pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in columns})
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise DataError(
                        f"{self.where(name)}: rows [{row - len(rows)}, {row}) mix value types in one field "
                        f"({exc}); give each field one type (text and id as strings)"
                    ) from exc

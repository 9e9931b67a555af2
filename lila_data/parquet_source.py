# SPDX-License-Identifier: AGPL-3.0-or-later
"""Local parquet files (one file or a folder searched recursively) in the FineWeb-Edu schema.

Row ranges are read through the parquet footer: only the row groups that overlap the range are
decoded, and only the requested columns, so reading a shard late in a large file costs no more than
reading one at its start. The last decoded row group is kept, so consecutive shards of one row group
decode it once; memory is one row group of the read columns (FineWeb-Edu files use row groups of a few
tens of MB; write your own files with ``row_group_size`` of 10³–10⁵ rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lila_data.errors import DataError
from lila_data.source_base import Source

PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class _FileInfo:
    num_rows: int
    columns: list[str]
    row_group_starts: list[int]


class ParquetSource(Source):
    """Documents in local ``.parquet`` files. ``path`` is a file or a folder (searched recursively)."""

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec)
        if not path.exists():
            raise DataError(f"source {spec!r}: {path} does not exist; check the path in the spec")
        if path.is_dir():
            self._root = path
            files = sorted(
                p.relative_to(path).as_posix() for p in path.rglob(f"*{PARQUET_SUFFIX}") if p.is_file()
            )
            if not files:
                raise DataError(
                    f"source {spec!r}: folder {path} holds no {PARQUET_SUFFIX} files; point the spec at a "
                    "folder of parquet files or use jsonl:PATH for JSON lines"
                )
        else:
            self._root = path.parent
            files = [path.name]
        self._files = files
        self._info: dict[str, _FileInfo] = {}
        self._cached: tuple[tuple, pa.Table] | None = None

    def file_names(self) -> list[str]:
        return list(self._files)

    def path(self, name: str) -> Path:
        """Absolute path of file ``name``."""
        return self._root / name

    def _file_info(self, name: str) -> _FileInfo:
        if name not in self._info:
            self.check_file(name)
            self._info[name] = self._open(name)
        return self._info[name]

    def _open(self, name: str) -> _FileInfo:
        path = self.path(name)
        if path.stat().st_size == 0:
            raise DataError(
                f"{self.where(name)}: the file is empty (0 bytes), probably an interrupted download; "
                "re-download it or delete it"
            )
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{self.where(name)}: not a readable parquet file ({exc}); it is corrupt or not parquet: "
                "re-download it or remove it from the folder"
            ) from exc
        if meta.num_rows == 0:
            raise DataError(
                f"{self.where(name)}: the file has no rows; remove it or re-export it with documents"
            )
        starts, total = [], 0
        for index in range(meta.num_row_groups):
            starts.append(total)
            total += meta.row_group(index).num_rows
        return _FileInfo(
            num_rows=meta.num_rows, columns=list(meta.schema.to_arrow_schema().names), row_group_starts=starts
        )

    def num_rows(self, name: str) -> int:
        return self._file_info(name).num_rows

    def column_names(self, name: str) -> list[str]:
        return self._file_info(name).columns

    def _row_group(self, name: str, group: int, columns: Sequence[str]) -> pa.Table:
        key = (name, group, tuple(columns))
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # free the old group before decoding the next one
            table = pq.ParquetFile(self.path(name)).read_row_group(group, columns=list(columns))
            self._cached = (key, table)
        return self._cached[1]

    def _read(
        self, name: str, row_start: int, row_stop: int, columns: Sequence[str], batch_rows: int
    ) -> Iterator[pa.Table]:
        info = self._file_info(name)
        bounds = [*info.row_group_starts, info.num_rows]
        for group in range(len(info.row_group_starts)):
            lo, hi = max(row_start, bounds[group]), min(row_stop, bounds[group + 1])
            if hi <= lo:
                continue
            try:
                table = self._row_group(name, group, columns)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"{self.where(name)}: reading row group {group} failed ({exc}); the file is corrupt: "
                    "re-download it"
                ) from exc
            for first in range(lo, hi, batch_rows):
                yield table.slice(first - bounds[group], min(batch_rows, hi - first))

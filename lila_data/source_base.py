# SPDX-License-Identifier: AGPL-3.0-or-later
"""What every data source offers: named files, their row counts, and row-range reads as Arrow tables.

A source is an ordered list of files (``file_names``, sorted, stable across machines), each an ordered
list of rows (documents) in the FineWeb-Edu schema. Rows are addressed by ``(file, row index)`` so that a
shard ``(source, file, row_start, row_stop)`` means the same documents on every peer.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from lila_data.errors import DataError

logger = logging.getLogger(__name__)

TEXT_COLUMN = "text"
ID_COLUMN = "id"
REQUIRED_COLUMNS = (TEXT_COLUMN, ID_COLUMN)
DEFAULT_BATCH_ROWS = 256
"""Rows per Arrow table yielded by :meth:`Source.read`. Larger batches tokenize faster (the tokenizer
parallelises over a batch) but hold more text in memory; 64–1024 is sensible for web documents.
``python -m bench.data`` measures the pipeline's tokens/s against raw tokenizer encoding."""


class Source(ABC):
    """A readable collection of documents. Subclasses implement the four ``_``-free abstract methods."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    @abstractmethod
    def file_names(self) -> list[str]:
        """The source's files, sorted; names are relative to the source so they match on every machine."""

    @abstractmethod
    def num_rows(self, name: str) -> int:
        """Number of documents in file ``name``."""

    @abstractmethod
    def column_names(self, name: str) -> list[str]:
        """Columns of file ``name``."""

    @abstractmethod
    def _read(
        self, name: str, row_start: int, row_stop: int, columns: Sequence[str], batch_rows: int
    ) -> Iterator[pa.Table]:
        """Yield the rows ``[row_start, row_stop)`` of ``name`` in order, as tables of ≤ batch_rows rows."""

    def where(self, name: str | None = None) -> str:
        """How error messages name this source (and file)."""
        return f"source {self.spec!r}" + (f", file {name!r}" if name is not None else "")

    def check_file(self, name: str) -> None:
        """Raise :class:`DataError` unless ``name`` is one of this source's files."""
        if name not in self.file_names():
            raise DataError(
                f"{self.where(name)}: no such file in this source (it has {len(self.file_names())} files); "
                "the data changed since the shards were planned: re-plan the shards or restore the file"
            )

    def read(
        self,
        name: str,
        *,
        row_start: int = 0,
        row_stop: int | None = None,
        columns: Sequence[str] = REQUIRED_COLUMNS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> Iterator[pa.Table]:
        """Yield rows ``[row_start, row_stop)`` of file ``name`` as Arrow tables with exactly ``columns``.

        ``text`` and ``id`` are always read and checked: ``id`` is cast to string, ``text`` must be a
        string column, and a null ``id`` is an error. Missing columns raise :class:`DataError`.
        """
        self.check_file(name)
        total = self.num_rows(name)
        stop = total if row_stop is None else row_stop
        if not 0 <= row_start <= stop <= total:
            raise DataError(
                f"{self.where(name)}: rows [{row_start}, {stop}) are outside the file's {total} rows; the "
                "file changed since the shards were planned: re-plan the shards"
            )
        if batch_rows < 1:
            raise DataError(f"batch_rows={batch_rows}: must be >= 1")
        wanted = list(dict.fromkeys([*REQUIRED_COLUMNS, *columns]))
        self.check_columns(name, wanted)
        if stop == row_start:
            return
        offset = row_start
        for table in self._read(name, row_start, stop, wanted, batch_rows):
            yield self._normalize(name, table, offset)
            offset += table.num_rows
        if offset != stop:
            raise DataError(
                f"{self.where(name)}: expected rows [{row_start}, {stop}) but the file ended at row {offset}; "
                "the file is truncated or changed: re-download it and re-plan the shards"
            )

    def check_columns(self, name: str, columns: Sequence[str]) -> None:
        """Raise :class:`DataError` naming the first of ``columns`` that file ``name`` lacks."""
        present = self.column_names(name)
        for column in columns:
            if column not in present:
                what = (
                    "required by the FineWeb-Edu schema"
                    if column in REQUIRED_COLUMNS
                    else "read by the filter"
                )
                raise DataError(
                    f"{self.where(name)}: missing column {column!r} ({what}); the file has "
                    f"{', '.join(present) or 'no columns'}. Rename your columns to the FineWeb-Edu schema "
                    "(text, id, ...) or fix the filter"
                )

    def _normalize(self, name: str, table: pa.Table, offset: int) -> pa.Table:
        text = table.column(TEXT_COLUMN)
        if not (
            pa.types.is_string(text.type)
            or pa.types.is_large_string(text.type)
            or pa.types.is_null(text.type)
        ):
            raise DataError(
                f"{self.where(name)}: column 'text' has type {text.type}, not string; store the document "
                "text as a UTF-8 string column"
            )
        ids = table.column(ID_COLUMN)
        if ids.null_count:
            row = offset + int(pc.index(pc.is_null(ids), True).as_py())
            raise DataError(
                f"{self.where(name)}: row {row} has a null 'id'; every document needs a unique id (it "
                "decides the validation split): fill the id column"
            )
        if not pa.types.is_string(ids.type):
            try:
                ids = ids.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(
                    f"{self.where(name)}: column 'id' of type {ids.type} cannot be read as text ({exc}); "
                    "store ids as strings"
                ) from exc
            table = table.set_column(table.column_names.index(ID_COLUMN), ID_COLUMN, ids)
        return table

    def iter_tables(
        self, *, columns: Sequence[str] = REQUIRED_COLUMNS, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[tuple[str, int, pa.Table]]:
        """Every row of every file, in order: ``(file name, first row index, table)``."""
        for name in self.file_names():
            offset = 0
            for table in self.read(name, columns=columns, batch_rows=batch_rows):
                yield name, offset, table
                offset += table.num_rows

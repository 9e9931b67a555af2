# SPDX-License-Identifier: AGPL-3.0-or-later
"""Shards: exact, deterministic addresses of slices of a source, and where to resume inside one.

A shard is ``(source spec, file, row_start, row_stop)``: the documents ``row_start ≤ row < row_stop``
of one file. :func:`plan_shards` cuts every file of a source into consecutive shards of
``docs_per_shard`` rows (the last shard of a file may be shorter); shards never cross files, so the
plan is a pure function of the spec, the files and their row counts, and the shards together cover
every row exactly once.

Choosing ``docs_per_shard``: a shard is the unit a peer leases. Large shards (10⁴–10⁵ web documents)
keep the coordinator's ledger small; small ones (tens of documents) suit tiny demos. Because a lease can
be released mid-way with a :class:`ResumePosition`, large shards lose no work when a peer leaves.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from lila_data.errors import DataError
from lila_data.sources import open_source

SHARD_ID_HEX_CHARS = 20


@dataclass(frozen=True)
class ShardAddress:
    """The documents ``[row_start, row_stop)`` of file ``file`` of source ``source`` (a spec string)."""

    source: str
    file: str
    row_start: int
    row_stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.row_start < self.row_stop:
            raise DataError(
                f"shard of {self.source!r}/{self.file!r}: rows [{self.row_start}, {self.row_stop}) are not a "
                "non-empty range with row_start >= 0; take addresses from plan_shards"
            )

    @property
    def num_docs(self) -> int:
        """Documents (rows) in the shard, kept or filtered out."""
        return self.row_stop - self.row_start

    @property
    def shard_id(self) -> str:
        """A stable id: 20 hex digits of sha256 over the four fields; equal addresses, equal ids."""
        key = "\n".join([self.source, self.file, str(self.row_start), str(self.row_stop)])
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:SHARD_ID_HEX_CHARS]

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, e.g. for JSON or a database row."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardAddress:
        """Inverse of :meth:`to_dict`."""
        return cls(
            source=raw["source"],
            file=raw["file"],
            row_start=int(raw["row_start"]),
            row_stop=int(raw["row_stop"]),
        )


@dataclass(frozen=True)
class ResumePosition:
    """How far into a shard a reader has got.

    ``docs_consumed``: documents of the shard (filtered-out ones included) that lie wholly before the
    resume point. ``tokens_consumed``: tokens of the shard's packed token stream before the resume point.
    ``ResumePosition(0, 0)`` is the start; when a shard is finished ``docs_consumed == shard.num_docs``.
    """

    docs_consumed: int = 0
    tokens_consumed: int = 0

    def __post_init__(self) -> None:
        if self.docs_consumed < 0 or self.tokens_consumed < 0:
            raise DataError(
                f"resume position {self}: counts must be >= 0; use a position a ShardReader released"
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ResumePosition:
        return cls(docs_consumed=int(raw["docs_consumed"]), tokens_consumed=int(raw["tokens_consumed"]))


def plan_shards(spec: str, *, docs_per_shard: int) -> list[ShardAddress]:
    """Cut source ``spec`` into shards of ``docs_per_shard`` rows, file by file, in file order."""
    if docs_per_shard < 1:
        raise DataError(f"docs_per_shard={docs_per_shard}: must be >= 1 (documents per leased shard)")
    source = open_source(spec)
    shards: list[ShardAddress] = []
    for name in source.file_names():
        rows = source.num_rows(name)
        for start in range(0, rows, docs_per_shard):
            shards.append(ShardAddress(spec, name, start, min(start + docs_per_shard, rows)))
    return shards

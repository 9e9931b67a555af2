# SPDX-License-Identifier: AGPL-3.0-or-later
"""Shard planning: deterministic addresses whose union covers every document exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lila_data import DataError, ResumePosition, ShardAddress, open_source, plan_shards
from lila_data.sources import bundled_path

BUNDLED = "bundled:fineweb-edu-sample"


def _read_ids(shard: ShardAddress) -> list[str]:
    source = open_source(shard.source)
    tables = source.read(shard.file, row_start=shard.row_start, row_stop=shard.row_stop, batch_rows=5)
    return [i for t in tables for i in t.column("id").to_pylist()]


@pytest.mark.parametrize("docs_per_shard", [1, 7, 16, 149, 150, 1000])
def test_bundled_shards_cover_every_document_exactly_once(docs_per_shard: int) -> None:
    shards = plan_shards(BUNDLED, docs_per_shard=docs_per_shard)
    assert len(shards) == -(-150 // docs_per_shard)
    assert all(s.num_docs <= docs_per_shard for s in shards)
    ids = Counter(i for s in shards for i in _read_ids(s))
    expected = pq.read_table(bundled_path("fineweb-edu-sample"), columns=["id"]).column("id").to_pylist()
    assert set(ids) == set(expected) and len(expected) == 150
    assert all(count == 1 for count in ids.values())


def test_multi_file_sources_never_cross_files_and_cover_all_rows(tmp_path: Path) -> None:
    table = pq.read_table(bundled_path("fineweb-edu-sample"))
    sizes = [("a.parquet", 0, 23), ("b/c.parquet", 23, 100), ("d.parquet", 100, 150)]
    for name, lo, hi in sizes:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(lo, hi - lo), tmp_path / name, row_group_size=9)
    spec = f"parquet:{tmp_path}"
    shards = plan_shards(spec, docs_per_shard=10)
    per_file = Counter(s.file for s in shards)
    assert per_file == {"a.parquet": 3, "b/c.parquet": 8, "d.parquet": 5}
    rows = Counter((s.file, r) for s in shards for r in range(s.row_start, s.row_stop))
    assert len(rows) == 150 and set(rows.values()) == {1}
    ids = [i for s in shards for i in _read_ids(s)]
    assert ids == table.column("id").to_pylist()


def test_plan_is_deterministic_and_ids_are_stable() -> None:
    first = plan_shards(BUNDLED, docs_per_shard=16)
    second = plan_shards(BUNDLED, docs_per_shard=16)
    assert first == second
    assert [s.shard_id for s in first] == [s.shard_id for s in second]
    assert len({s.shard_id for s in first}) == len(first)
    assert all(len(s.shard_id) == 20 and int(s.shard_id, 16) >= 0 for s in first)
    copy = ShardAddress.from_dict(first[3].to_dict())
    assert copy == first[3] and copy.shard_id == first[3].shard_id
    moved = ShardAddress(first[3].source, first[3].file, first[3].row_start + 1, first[3].row_stop)
    assert moved.shard_id != first[3].shard_id


def test_bad_addresses_and_sizes() -> None:
    with pytest.raises(DataError, match="docs_per_shard=0"):
        plan_shards(BUNDLED, docs_per_shard=0)
    with pytest.raises(DataError, match="non-empty range"):
        ShardAddress(BUNDLED, "x.parquet", 5, 5)
    with pytest.raises(DataError, match="must be >= 0"):
        ResumePosition(docs_consumed=-1, tokens_consumed=0)
    assert ResumePosition.from_dict(ResumePosition(3, 40).to_dict()) == ResumePosition(3, 40)

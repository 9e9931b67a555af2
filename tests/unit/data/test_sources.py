# SPDX-License-Identifier: AGPL-3.0-or-later
"""Sources: every spec kind reads the same documents; bad input fails with a clear DataError."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lila_data import DataError, open_source
from lila_data.sources import bundled_path

BUNDLED = "bundled:fineweb-edu-sample"
BUNDLED_ROWS = 150
FINEWEB_COLUMNS = ["text", "id", "dump", "url", "language", "score", "int_score"]


@pytest.fixture(scope="module")
def sample() -> pa.Table:
    return pq.read_table(bundled_path("fineweb-edu-sample"))


def _ids(source, columns=("text", "id")) -> list[str]:
    return [
        i
        for _, _, t in source.iter_tables(columns=list(columns), batch_rows=17)
        for i in t.column("id").to_pylist()
    ]


def test_bundled_sample_schema_and_rows(sample: pa.Table) -> None:
    source = open_source(BUNDLED)
    assert source.file_names() == ["sample-10BT-head-150.parquet"]
    assert source.num_rows("sample-10BT-head-150.parquet") == BUNDLED_ROWS
    assert source.column_names("sample-10BT-head-150.parquet") == FINEWEB_COLUMNS
    assert _ids(source) == sample.column("id").to_pylist()
    credit = (bundled_path("fineweb-edu-sample").parent / "CREDIT.md").read_text()
    assert "ODC-By 1.0" in credit and "HuggingFaceFW" in credit and "Common Crawl" in credit


def test_row_range_reads_exact_rows_across_row_groups(sample: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "grouped.parquet"
    pq.write_table(sample, path, row_group_size=13)
    source = open_source(f"parquet:{path}")
    for start, stop, batch in [
        (0, 150, 7),
        (12, 14, 1),
        (13, 26, 5),
        (25, 101, 40),
        (149, 150, 3),
        (40, 40, 3),
    ]:
        tables = list(source.read("grouped.parquet", row_start=start, row_stop=stop, batch_rows=batch))
        assert all(t.num_rows <= batch for t in tables)
        got = [i for t in tables for i in t.column("id").to_pylist()]
        assert got == sample.column("id").to_pylist()[start:stop]


def test_parquet_folder_is_sorted_recursive_and_relative(sample: pa.Table, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    pq.write_table(sample.slice(100), tmp_path / "b" / "part.parquet")
    pq.write_table(sample.slice(0, 60), tmp_path / "a.parquet")
    pq.write_table(sample.slice(60, 40), tmp_path / "a2.parquet")
    source = open_source(f"parquet:{tmp_path}")
    assert source.file_names() == ["a.parquet", "a2.parquet", "b/part.parquet"]
    assert _ids(source) == sample.column("id").to_pylist()


def test_jsonl_reads_like_parquet_and_skips_blank_lines(sample: pa.Table, tmp_path: Path) -> None:
    rows = sample.to_pylist()
    folder = tmp_path / "jl"
    folder.mkdir()
    with (folder / "one.jsonl").open("w", encoding="utf-8") as handle:
        for index, row in enumerate(rows[:70]):
            handle.write(json.dumps(row) + ("\n\n" if index % 9 == 0 else "\n"))
    (folder / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[70:]), encoding="utf-8")
    source = open_source(f"jsonl:{folder}")
    assert source.file_names() == ["one.jsonl", "two.jsonl"]
    assert source.num_rows("one.jsonl") == 70
    assert _ids(source, ("text", "id", "int_score")) == sample.column("id").to_pylist()
    (table,) = source.read("one.jsonl", row_start=30, row_stop=35, columns=["int_score"])
    assert table.column("text").to_pylist() == sample.column("text").to_pylist()[30:35]
    assert table.column("int_score").to_pylist() == sample.column("int_score").to_pylist()[30:35]


def test_integer_ids_are_read_as_strings(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a", "b"], "id": [7, 8]}), tmp_path / "ints.parquet")
    (table,) = open_source(f"parquet:{tmp_path / 'ints.parquet'}").read("ints.parquet")
    assert table.column("id").to_pylist() == ["7", "8"]


def test_hub_source_streams_row_ranges_from_a_mirror(sample: pa.Table, tmp_path: Path) -> None:
    folder = tmp_path / "sample" / "10BT"
    folder.mkdir(parents=True)
    pq.write_table(sample.slice(0, 90), folder / "000_00000.parquet", row_group_size=20)
    pq.write_table(sample.slice(90), folder / "001_00000.parquet")
    source = open_source(f"hf:HuggingFaceFW/fineweb-edu?config=sample-10BT&mirror={tmp_path}")
    assert source.file_names() == ["sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    assert [source.num_rows(n) for n in source.file_names()] == [90, 60]
    assert source.url("sample/10BT/001_00000.parquet") == str(folder / "001_00000.parquet")
    tables = list(
        source.read(
            "sample/10BT/000_00000.parquet", row_start=33, row_stop=71, columns=["int_score"], batch_rows=16
        )
    )
    assert [t.num_rows for t in tables] == [16, 16, 6]
    got = pa.concat_tables(tables)
    assert got.column("id").to_pylist() == sample.column("id").to_pylist()[33:71]
    assert got.column("int_score").to_pylist() == sample.column("int_score").to_pylist()[33:71]


def test_hub_url_addresses_repo_files_by_revision() -> None:
    source = open_source("hf:HuggingFaceFW/fineweb-edu?config=CC-MAIN-2024-10&revision=v1.2.0")
    assert source.folder == "data/CC-MAIN-2024-10"
    assert source.url("data/CC-MAIN-2024-10/000_00000.parquet") == (
        "hf://datasets/HuggingFaceFW/fineweb-edu@v1.2.0/data/CC-MAIN-2024-10/000_00000.parquet"
    )
    assert open_source("hf:HuggingFaceFW/fineweb-edu?config=sample-10BT").folder == "sample/10BT"


# ---------------------------------------------------------------- bad input


def _refuses(call: Callable[[], object], *fragments: str) -> None:
    """``call()`` raises a DataError whose message holds every fragment."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_config_names_the_source_and_the_choices() -> None:
    spec = "hf:HuggingFaceFW/fineweb-edu?config=sample-7BT"
    _refuses(lambda: open_source(spec), spec, "unknown config 'sample-7BT'", "sample-10BT")


def test_hub_spec_problems() -> None:
    for spec, *fragments in (
        ("hf:HuggingFaceFW/fineweb-edu", "hf:HuggingFaceFW/fineweb-edu", "name a config"),
        ("hf:someone/else?config=x", "hf:someone/else?config=x", "parquet:PATH"),
        ("hf:HuggingFaceFW/fineweb-edu?config=sample-10BT&colour=red", "colour", "unknown parameter"),
    ):
        _refuses(lambda spec=spec: open_source(spec), *fragments)


def test_missing_column_names_the_file_and_the_fix(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["hello"], "uid": ["x"]}), tmp_path / "noid.parquet")
    spec = f"parquet:{tmp_path}"
    source = open_source(spec)
    _refuses(lambda: list(source.read("noid.parquet")), spec, "noid.parquet", "missing column 'id'", "Rename")


def test_missing_text_in_jsonl(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": "1", "body": "x"}\n')
    spec = f"jsonl:{tmp_path / 'd.jsonl'}"
    _refuses(lambda: list(open_source(spec).read("d.jsonl")), spec, "missing column 'text'")


def test_empty_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "empty.parquet").write_bytes(b"")
    spec = f"parquet:{tmp_path / 'empty.parquet'}"
    _refuses(lambda: open_source(spec).num_rows("empty.parquet"), spec, "empty (0 bytes)", "re-download")


def test_parquet_without_rows(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "id": pa.array([], pa.string())}), tmp_path / "z.parquet"
    )
    spec = f"parquet:{tmp_path / 'z.parquet'}"
    _refuses(lambda: open_source(spec).num_rows("z.parquet"), spec, "no rows")


def test_empty_jsonl_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    spec = f"jsonl:{tmp_path / 'empty.jsonl'}"
    _refuses(lambda: open_source(spec).num_rows("empty.jsonl"), spec, "empty")


def test_corrupt_parquet(tmp_path: Path, sample: pa.Table) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(sample.slice(0, 5), good)
    data = good.read_bytes()
    (tmp_path / "bad.parquet").write_bytes(data[: len(data) // 2])  # a truncated download
    spec = f"parquet:{tmp_path / 'bad.parquet'}"
    _refuses(lambda: open_source(spec).num_rows("bad.parquet"), spec, "bad.parquet", "corrupt")


def test_invalid_json_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": "1", "text": "a"}\n{"id": "2", "text": \n')
    spec = f"jsonl:{tmp_path / 'd.jsonl'}"
    _refuses(lambda: list(open_source(spec).read("d.jsonl")), spec, "row 1 is not valid JSON")


def test_null_id_and_non_string_text(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a", "b", "c"], "id": ["1", None, "3"]}), tmp_path / "n.parquet")
    spec = f"parquet:{tmp_path / 'n.parquet'}"
    _refuses(lambda: list(open_source(spec).read("n.parquet")), spec, "row 1 has a null 'id'")
    pq.write_table(pa.table({"text": [1, 2], "id": ["1", "2"]}), tmp_path / "t.parquet")
    spec = f"parquet:{tmp_path / 't.parquet'}"
    _refuses(lambda: list(open_source(spec).read("t.parquet")), spec, "column 'text' has type int64")


def test_bad_specs_and_paths(tmp_path: Path) -> None:
    _refuses(lambda: open_source("s3://bucket"), "s3://bucket", "bundled:fineweb-edu-sample")
    _refuses(lambda: open_source("bundled:nope"), "bundled:nope", "fineweb-edu-sample")
    missing = tmp_path / "missing"
    _refuses(lambda: open_source(f"parquet:{missing}"), str(missing), "does not exist")
    _refuses(lambda: open_source(f"parquet:{tmp_path}"), str(tmp_path), "no .parquet files")


def test_row_range_outside_the_file_asks_to_replan() -> None:
    source = open_source(BUNDLED)
    _refuses(
        lambda: list(source.read("sample-10BT-head-150.parquet", row_start=140, row_stop=151)),
        BUNDLED,
        "re-plan",
    )
    _refuses(lambda: list(source.read("other.parquet")), BUNDLED, "no such file")


def test_corrupt_file_in_a_hub_mirror(tmp_path: Path) -> None:
    folder = tmp_path / "sample" / "10BT"
    folder.mkdir(parents=True)
    (folder / "000_00000.parquet").write_bytes(b"PAR1 this is not parquet")
    spec = f"hf:HuggingFaceFW/fineweb-edu?config=sample-10BT&mirror={tmp_path}"
    _refuses(
        lambda: open_source(spec).num_rows("sample/10BT/000_00000.parquet"),
        spec,
        "not a readable parquet file",
        "re-download",
    )
    _refuses(
        lambda: open_source(f"hf:HuggingFaceFW/fineweb-edu?config=sample-100BT&mirror={tmp_path}"),
        "has no folder sample/100BT/",
        "huggingface-cli download",
    )

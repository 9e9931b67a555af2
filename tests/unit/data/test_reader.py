# SPDX-License-Identifier: AGPL-3.0-or-later
"""ShardReader: exact packing, resume identity at every cut point, filters, split and masking."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lila_data import (
    IGNORE_INDEX,
    DataError,
    ResumePosition,
    ShardAddress,
    ShardReader,
    is_validation,
    load_tokenizer,
    open_source,
    parse_filter,
    plan_shards,
)
from lila_data.sources import bundled_path

BUNDLED = "bundled:fineweb-edu-sample"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("fineweb-edu-2048")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return pq.read_table(bundled_path("fineweb-edu-sample")).to_pylist()


def _expected_stream(tok, rows, shard: ShardAddress, *, doc_filter=None, split="train", fraction=0.1):
    """The shard's token stream and per-row stream ends, computed independently of the reader."""
    parsed = parse_filter(doc_filter) if doc_filter else None
    stream, ends = [], []
    for row in rows[shard.row_start : shard.row_stop]:
        held_out = is_validation(row["id"], fraction)
        in_split = split == "all" or (held_out if split == "validation" else not held_out)
        if row["text"] and in_split and (parsed is None or parsed.matches(row)):
            stream += [*tok.encode(row["text"]), tok.eos_id]
        ends.append(len(stream))
    return stream, ends


def _read(shard, tok, seq_len, position=None, **kw):
    reader = ShardReader(shard, tokenizer=tok, seq_len=seq_len, position=position, **kw)
    return list(reader), reader


def test_sequences_are_consecutive_windows_of_the_stream(tok, rows) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=6)[2]
    seq_len = 50
    stream, ends = _expected_stream(tok, rows, shard)
    sequences, reader = _read(shard, tok, seq_len, batch_rows=4)
    assert len(sequences) == (len(stream) - 1) // seq_len
    for k, seq in enumerate(sequences):
        assert seq.input_ids.dtype == torch.long and seq.input_ids.shape == (seq_len,)
        assert seq.input_ids.tolist() == stream[k * seq_len : (k + 1) * seq_len]
        assert seq.targets.tolist() == stream[k * seq_len + 1 : (k + 1) * seq_len + 1]
    for seq in sequences[:-1]:
        t = seq.position.tokens_consumed
        assert seq.position.docs_consumed == sum(1 for e in ends if e <= t)
    final = ResumePosition(docs_consumed=shard.num_docs, tokens_consumed=len(stream))
    assert sequences[-1].position == final
    assert reader.position == final and reader.finished


@pytest.mark.parametrize(
    ("docs_per_shard", "shard_index", "seq_len", "options"),
    [
        (5, 0, 64, {}),
        (8, 3, 37, {"doc_filter": "int_score >= 4", "batch_rows": 3}),
        (10, 1, 128, {"split": "all", "document_mask": True}),
        (12, 10, 40, {"split": "validation", "validation_fraction": 0.5}),
    ],
)
def test_resume_at_every_cut_point_gives_the_same_stream(
    tok, docs_per_shard, shard_index, seq_len, options
) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=docs_per_shard)[shard_index]
    full, _ = _read(shard, tok, seq_len, **options)
    assert len(full) >= 3
    for cut in range(len(full)):
        resumed, reader = _read(shard, tok, seq_len, position=full[cut].position, **options)
        assert len(resumed) == len(full) - cut - 1
        for a, b in zip(resumed, full[cut + 1 :], strict=True):
            assert torch.equal(a.input_ids, b.input_ids)
            assert torch.equal(a.targets, b.targets)
            assert a.position == b.position
        assert reader.position == full[-1].position and reader.finished


def test_interrupted_chain_of_readers_equals_one_reader(tok) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=9)[4]
    full, _ = _read(shard, tok, 40)
    pieces, position = [], None
    for take in itertools.cycle([1, 3, 2, 7]):
        reader = ShardReader(shard, tokenizer=tok, seq_len=40, position=position)
        pieces += list(itertools.islice(iter(reader), take))
        position = reader.position
        if reader.finished or position.docs_consumed == shard.num_docs:
            break
    assert [p.input_ids.tolist() for p in pieces] == [f.input_ids.tolist() for f in full]


def test_resume_with_a_new_sequence_length_continues_the_stream(tok, rows) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=4)[5]
    stream, _ = _expected_stream(tok, rows, shard)
    first, _ = _read(shard, tok, 30)
    position = first[4].position
    later, _ = _read(shard, tok, 70, position=position)
    t = position.tokens_consumed
    assert t == 150
    assert [s.input_ids.tolist() for s in later] == [
        stream[t + k * 70 : t + (k + 1) * 70] for k in range((len(stream) - t - 1) // 70)
    ]


def test_filter_and_split_skip_documents_that_still_count(tok, rows) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=20)[1]
    stream, ends = _expected_stream(tok, rows, shard, doc_filter="int_score >= 5 and score > 4.6")
    assert ends[-1] == len(stream)
    kept = [
        r for r in rows[20:40] if r["int_score"] >= 5 and r["score"] > 4.6 and not is_validation(r["id"], 0.1)
    ]
    assert 0 < len(kept) < 20
    assert stream.count(tok.eos_id) == len(kept)
    sequences, reader = _read(shard, tok, 32, doc_filter="int_score >= 5 and score > 4.6")
    assert [s.input_ids.tolist() for s in sequences] == [
        stream[k * 32 : (k + 1) * 32] for k in range(len(sequences))
    ]
    assert reader.position == ResumePosition(20, len(stream))


def test_train_and_validation_streams_partition_the_documents(tok, rows) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=150)[0]
    train, _ = _expected_stream(tok, rows, shard, split="train")
    val, _ = _expected_stream(tok, rows, shard, split="validation")
    everything, _ = _expected_stream(tok, rows, shard, split="all")
    assert len(train) + len(val) == len(everything)
    n_val = sum(is_validation(r["id"], 0.1) for r in rows)
    assert train.count(tok.eos_id) == 150 - n_val and val.count(tok.eos_id) == n_val


def test_document_mask_masks_targets_after_eos(tok, rows) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=6)[0]
    plain, _ = _read(shard, tok, 64, split="all")
    masked, _ = _read(shard, tok, 64, split="all", document_mask=True)
    n_masked = 0
    for p, m in zip(plain, masked, strict=True):
        assert torch.equal(p.input_ids, m.input_ids)
        at_eos = p.input_ids == tok.eos_id
        assert (m.targets[at_eos] == IGNORE_INDEX).all()
        assert torch.equal(m.targets[~at_eos], p.targets[~at_eos])
        n_masked += int(at_eos.sum())
    stream, _ = _expected_stream(tok, rows, shard, split="all")
    assert n_masked == stream[: len(plain) * 64].count(tok.eos_id)
    assert n_masked >= 4


def test_short_and_empty_shards_finish_without_sequences(tok, tmp_path: Path) -> None:
    pq.write_table(
        pa.table(
            {"text": ["short one", "", None, "tiny"], "id": ["a", "b", "c", "d"], "int_score": [1, 5, 5, 2]}
        ),
        tmp_path / "s.parquet",
    )
    spec = f"parquet:{tmp_path / 's.parquet'}"
    (shard,) = plan_shards(spec, docs_per_shard=10)
    stream_len = len(tok.encode("short one")) + len(tok.encode("tiny")) + 2
    sequences, reader = _read(shard, tok, 512, split="all")
    assert sequences == [] and reader.finished and reader.position == ResumePosition(4, stream_len)
    sequences, reader = _read(shard, tok, 2, split="all", doc_filter="int_score >= 3")
    assert sequences == [] and reader.position == ResumePosition(4, 0)
    done, reader = _read(shard, tok, 2, split="all", position=ResumePosition(4, stream_len))
    assert done == [] and reader.finished


def test_jsonl_and_hub_readers_produce_identical_sequences(tok, rows, tmp_path: Path) -> None:
    import json

    table = pq.read_table(bundled_path("fineweb-edu-sample"))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]), encoding="utf-8")
    (tmp_path / "sample" / "10BT").mkdir(parents=True)
    pq.write_table(table.slice(0, 30), tmp_path / "sample" / "10BT" / "000.parquet", row_group_size=7)
    specs = [
        BUNDLED,
        f"jsonl:{tmp_path / 'd.jsonl'}",
        f"hf:HuggingFaceFW/fineweb-edu?config=sample-10BT&mirror={tmp_path}",
    ]
    results = []
    for spec in specs:
        shard = next(s for s in plan_shards(spec, docs_per_shard=11) if s.row_start == 11)
        sequences, _ = _read(shard, tok, 48, doc_filter="int_score >= 3", batch_rows=4)
        results.append([s.input_ids.tolist() for s in sequences])
    assert results[0] == results[1] == results[2] and len(results[0]) > 5


def test_positions_that_do_not_belong_to_the_shard_are_rejected(tok) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=5)[0]
    full, _ = _read(shard, tok, 64)
    end = full[-1].position.tokens_consumed
    with pytest.raises(DataError, match="past the end of the shard's stream"):
        _read(shard, tok, 64, position=ResumePosition(2, end + 500))
    with pytest.raises(DataError, match="lies before document 3"):
        _read(shard, tok, 64, position=ResumePosition(3, 1))
    with pytest.raises(DataError, match="past the 5 documents"):
        ShardReader(shard, tokenizer=tok, seq_len=64, position=ResumePosition(6, 0))
    with pytest.raises(DataError, match="split 'dev' is unknown"):
        ShardReader(shard, tokenizer=tok, seq_len=64, split="dev")
    with pytest.raises(DataError, match="not the shard's source"):
        ShardReader(shard, tokenizer=tok, seq_len=64, source=open_source("jsonl:/dev/null"))


def test_filter_on_a_missing_column_is_a_clear_error(tok, tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a b c"], "id": ["1"]}), tmp_path / "x.parquet")
    (shard,) = plan_shards(f"parquet:{tmp_path / 'x.parquet'}", docs_per_shard=1)
    with pytest.raises(DataError, match=r"missing column 'int_score' \(read by the filter\)"):
        _read(shard, tok, 8, doc_filter="int_score >= 4")


def test_stream_tokens_are_int64_numpy_compatible(tok) -> None:
    shard = plan_shards(BUNDLED, docs_per_shard=3)[0]
    (first, *_), _ = _read(shard, tok, 16)
    assert np.asarray(first.input_ids).dtype == np.int64


def test_windows_and_documents_ending_exactly_on_a_cut(tok, rows) -> None:
    """A document ending exactly at a cut counts as consumed; a stream of exactly k windows + 1 token
    reports the shard finished on the k-th window only."""
    for shard in plan_shards(BUNDLED, docs_per_shard=6):
        stream, ends = _expected_stream(tok, rows, shard, split="all")
        divisors = [n for n in range(8, len(stream) // 3) if (len(stream) - 1) % n == 0]
        if divisors:
            break
    seq_len = ends[0]  # the first window's cut is the first document's end
    sequences, _ = _read(shard, tok, seq_len, split="all")
    assert sequences[0].position == ResumePosition(1, seq_len)
    exact = divisors[0]
    sequences, _ = _read(shard, tok, exact, split="all")
    k = (len(stream) - 1) // exact
    assert len(sequences) == k
    assert [s.position.tokens_consumed for s in sequences] == [exact * i for i in range(1, k)] + [len(stream)]
    assert sequences[-2].position.docs_consumed < shard.num_docs == sequences[-1].position.docs_consumed
    resumed, _ = _read(shard, tok, exact, split="all", position=sequences[-2].position)
    assert len(resumed) == 1 and torch.equal(resumed[0].input_ids, sequences[-1].input_ids)

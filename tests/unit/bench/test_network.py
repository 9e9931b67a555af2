# SPDX-License-Identifier: AGPL-3.0-or-later
"""bench.baseline (plain training on a bench run's tokens) and the pure parts of bench.network.

The network runs themselves are the benchmark (minutes to hours); here only what can be checked in
seconds: the baseline's batches, token accounting, determinism and captured pseudo-gradient, the layout
of the shipped bench runs, and the reduction of a peer's diary to the reported figures.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bench.baseline import (
    BaselineResult,
    BenchConfigError,
    build_model,
    evaluate,
    iter_batches,
    single_stage,
    train_plain,
    validation_texts,
    with_data,
)
from bench.network.data import shuffled_source
from bench.network.layout import CODECS, Layout, derive_layout, network_run_config
from bench.network.measure import checkpoint_curve
from bench.network.watch import parse_metrics, peer_stats, state_sync_from
from lila_data import StageConfig, is_validation, load_tokenizer
from lila_net.config import RunConfig, load_run_config
from peer.checkpoints import CheckpointStore
from tests.helpers.paths import REPO

TINY_BATCH = 2
TINY_SEQ = 32
TINY_STEPS = 6


@pytest.fixture(scope="module")
def tiny_run() -> RunConfig:
    """runs/bench-quick.toml on the bundled sample, cut to a few short steps and two validation texts."""
    run = load_run_config(REPO / "runs" / "bench-quick.toml")
    tokens = TINY_BATCH * TINY_SEQ * TINY_STEPS
    stage = replace(run.curriculum.stages[0], tokens=tokens, seq_len=TINY_SEQ)
    schedule = replace(run.curriculum.schedule, warmup_tokens=TINY_BATCH * TINY_SEQ, decay_tokens=TINY_BATCH * TINY_SEQ)
    return replace(run, curriculum=replace(run.curriculum, stages=(stage,), schedule=schedule),
                   data=replace(run.data, validation_max_docs=2))


def test_batches_are_shifted_windows(tiny_run: RunConfig) -> None:
    tokenizer = load_tokenizer(tiny_run.data.tokenizer)
    batches = iter_batches(tiny_run, tokenizer, batch_size=TINY_BATCH)
    inputs, targets = next(batches)
    assert inputs.shape == (TINY_BATCH, TINY_SEQ) and targets.shape == (TINY_BATCH, TINY_SEQ)
    # a packed window predicts its next token: targets are the inputs shifted by one
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    second, _ = next(batches)
    assert not torch.equal(inputs, second)


def test_plain_training_counts_tokens_learns_and_repeats_exactly(tiny_run: RunConfig) -> None:
    budget = tiny_run.curriculum.total_tokens
    first = train_plain(tiny_run, batch_size=TINY_BATCH, token_budget=budget, eval_every_tokens=budget // 2,
                        threads=1, capture_delta=(1, 2))
    assert first.steps == TINY_STEPS
    assert first.tokens == budget == TINY_STEPS * TINY_BATCH * TINY_SEQ
    assert [p.tokens for p in first.curve] == [0, budget // 2, budget]
    assert first.final_bpb == first.curve[-1].val_bpb
    assert first.final_bpb < first.curve[0].val_bpb  # six AdamW steps at 3e-3 already lower the bpb
    params = sum(p.numel() for p in build_model(tiny_run, load_tokenizer(tiny_run.data.tokenizer)).parameters())
    assert first.delta is not None and first.delta.shape == (params,) and float(first.delta.norm()) > 0
    again = train_plain(tiny_run, batch_size=TINY_BATCH, token_budget=budget, eval_every_tokens=budget // 2,
                        threads=1, capture_delta=(1, 2))
    assert again.final_bpb == first.final_bpb  # same seed, same data, same code path: bit-identical
    assert torch.equal(again.delta, first.delta)
    restored = BaselineResult.from_json(first.to_json())
    assert restored.final_bpb == first.final_bpb and restored.curve == first.curve


def test_capture_beyond_the_run_keeps_nothing(tiny_run: RunConfig) -> None:
    budget = tiny_run.curriculum.total_tokens
    result = train_plain(tiny_run, batch_size=TINY_BATCH, token_budget=budget, eval_every_tokens=budget,
                         threads=1, capture_delta=(TINY_STEPS - 1, 2))
    assert result.delta is None


def test_a_budget_beyond_the_data_is_refused(tiny_run: RunConfig, tmp_path: Path) -> None:
    # two short training documents (ids chosen outside the 10% validation split) hold a few windows only
    texts = ["def f(x):\n    return x + 1\n" * 8, "class A:\n    pass\n" * 8]
    ids = [i for i in (f"doc-{n}" for n in range(100)) if not is_validation(i, tiny_run.data.validation_fraction)]
    pq.write_table(pa.table({"text": texts, "id": ids[:2]}), tmp_path / "tiny.parquet")
    tiny = with_data(tiny_run, f"parquet:{tmp_path / 'tiny.parquet'}")
    windows = sum(1 for _ in iter_batches(tiny, load_tokenizer(tiny.data.tokenizer), batch_size=1))
    with pytest.raises(BenchConfigError, match=f"ran out after {windows * TINY_SEQ} of"):
        train_plain(tiny, batch_size=1, token_budget=(windows + 1) * TINY_SEQ, eval_every_tokens=10**9, threads=1,
                    val_texts=texts[:1])


def test_multi_stage_runs_are_refused(tiny_run: RunConfig) -> None:
    stage = tiny_run.curriculum.stages[0]
    two = replace(tiny_run, curriculum=replace(tiny_run.curriculum, stages=(stage, replace(stage, name="more"))))
    with pytest.raises(BenchConfigError, match="exactly one"):
        single_stage(two)
    mixed = replace(tiny_run, data=replace(tiny_run.data, sources={"docs": "x", "other": "y"}),
                    curriculum=replace(tiny_run.curriculum, stages=(
                        StageConfig(name="s", tokens=stage.tokens, seq_len=TINY_SEQ, mixture={"docs": 1, "other": 1}),)))
    with pytest.raises(BenchConfigError, match="exactly one"):
        single_stage(mixed)


@pytest.mark.parametrize(("name", "inner", "budget"), [("bench-quick", 100, 3_072_000), ("bench-full", 150, 4_608_000)])
def test_shipped_bench_runs_give_15_outer_steps_for_every_peer_count(name: str, inner: int, budget: int) -> None:
    layout = derive_layout(load_run_config(REPO / "runs" / f"{name}.toml"), (2, 4))
    assert layout == Layout(outer_steps=15, batch_size=4, seq_len=128, budget=budget,
                            inner_steps={2: 2 * inner, 4: inner})
    assert layout.tokens_per_outer_step(2) == layout.tokens_per_outer_step(4) == budget // 15


def _with(run: RunConfig, *, tokens: int, inner_steps: int, batch_size: int) -> RunConfig:
    stage = replace(run.curriculum.stages[0], tokens=tokens)
    schedule = replace(run.curriculum.schedule, warmup_tokens=0, decay_tokens=0)
    return replace(run, curriculum=replace(run.curriculum, stages=(stage,), schedule=schedule),
                   diloco=replace(run.diloco, inner_steps=inner_steps, batch_size=batch_size))


def test_layout_refuses_uneven_or_too_few_outer_steps(tiny_run: RunConfig) -> None:
    per_step = 4 * 5 * 2 * TINY_SEQ  # 4 reference peers × H × B × T
    with pytest.raises(ValueError, match="whole number of outer steps"):
        derive_layout(_with(tiny_run, tokens=per_step * 15 + 1, inner_steps=5, batch_size=2), (2, 4))
    with pytest.raises(ValueError, match="only 14 outer steps"):
        derive_layout(_with(tiny_run, tokens=per_step * 14, inner_steps=5, batch_size=2), (2, 4))
    with pytest.raises(ValueError, match="3 peers cannot split"):
        derive_layout(_with(tiny_run, tokens=per_step * 15, inner_steps=5, batch_size=2), (3,))
    layout = derive_layout(_with(tiny_run, tokens=per_step * 15, inner_steps=5, batch_size=2), (1, 2, 4))
    assert (layout.outer_steps, layout.inner_steps) == (15, {1: 20, 2: 10, 4: 5})


def test_network_config_sets_codec_and_inner_steps(tiny_run: RunConfig) -> None:
    config = network_run_config(tiny_run, CODECS["e8-2"], 4, inner_steps=7)
    assert (config.codec.name, config.codec.bits, config.diloco.inner_steps) == ("e8", 2, 7)
    assert config.run.name == "bench-quick-4p-e8-2"
    assert network_run_config(tiny_run, CODECS["fp32"], 2, inner_steps=7).codec.name == "fp32"
    sparse = network_run_config(tiny_run, CODECS["sparse-e8-2"], 2, inner_steps=7).codec
    assert (sparse.name, sparse.bits, sparse.density, sparse.hadamard) == ("sparse-e8", 2, 0.01, False)
    assert sparse.options() == {"density": 0.01, "chunk": 4096, "bits": 2, "rotation": 0}
    for choice in CODECS.values():  # every bench codec is a valid [codec] section
        assert network_run_config(tiny_run, choice, 2, inner_steps=7).codec.name == choice.name


def test_parse_metrics_keeps_the_samples_the_bench_reads() -> None:
    text = ("# TYPE lila_peer_tokens counter\nlila_peer_tokens_total 5120.0\n"
            "# TYPE lila_peer_codec_relative_error gauge\nlila_peer_codec_relative_error 0.0625\n"
            "# TYPE lila_peer_loss gauge\nlila_peer_loss 3.5\n")
    assert parse_metrics(text) == {"lila_peer_tokens_total": 5120.0, "lila_peer_codec_relative_error": 0.0625}


def _diary() -> list[dict]:
    events: list[dict] = [
        {"event": "state", "t": 100.0, "outer_step": 0, "params_sha256": "h0", "source": "init", "val_bpb": 5.5},
        {"event": "first_step", "t": 104.0, "seconds": 3.0, "process_seconds": 9.5},
    ]
    t = 110.0
    rounds = [(800, "ok", 2, 4.75), (1000, "ok", 2, 4.5), (0, "alone", 1, 4.25)]
    for k, (sent, status, group, bpb) in enumerate(rounds, start=1):
        events += [
            {"event": "round_start", "t": t, "round": k},
            {"event": "round", "t": t + 2.0, "round": k, "status": status, "applied": True, "group_size": group,
             "seconds": 2.0, "matchmaking_s": 1.5, "allreduce_s": 0.5, "bytes_sent": sent, "bytes_received": sent + 1},
            {"event": "outer_step", "t": t + 3.0, "outer_step": k, "params_sha256": f"h{k}", "val_bpb": bpb,
             "group_size": group, "status": status, "tokens": 2560, "period_s": 7.0, "step_s": 5.0,
             "phases": {"verify": 0.25 * k, "checkpoint": 0.5} if k < 3 else {"checkpoint": 0.75}},
        ]
        t += 10.0
    return events


def test_peer_stats_reduce_a_diary_to_the_reported_figures() -> None:
    stats = peer_stats("peer-0", _diary(), [])
    assert stats.join_to_first_step_s == 9.5
    assert stats.outer_steps == 3
    assert (stats.cycle_tokens, stats.cycle_seconds) == (2 * 2560, 20.0)
    assert stats.tokens_per_s == 256.0
    assert stats.rounds == {"ok": 2, "alone": 1}
    assert stats.bytes_sent == [800, 1000]  # a round alone sends nothing and is not a communication round
    assert stats.bytes_per_outer_step == 900.0
    assert stats.inner_s == [7.0, 7.0]  # outer_step(k-1) -> round_start(k)
    assert stats.after_s == [1.0, 1.0]
    assert stats.group_sizes == [1, 2]
    assert stats.curve == [(0, 5.5), (1, 4.75), (2, 4.5), (3, 4.25)]
    assert stats.hashes == {1: "h1", 2: "h2", 3: "h3"}
    assert stats.phases == {"verify": [0.25, 0.5], "checkpoint": [0.5, 0.5, 0.75]}
    assert stats.in_steps_fraction == 0.5  # 2 cycles of 10 s, 5 s of each inside optimizer steps


def test_checkpoint_curve_evaluates_every_verified_checkpoint_like_the_baselines(tiny_run: RunConfig,
                                                                              tmp_path: Path) -> None:
    tokenizer = load_tokenizer(tiny_run.data.tokenizer)
    texts = validation_texts(tiny_run)
    store = CheckpointStore(tmp_path / "checkpoints", keep=10)
    model = build_model(tiny_run, tokenizer)
    expected = {}
    for step in (1, 2, 3):
        with torch.no_grad():
            model.tok_emb.weight.mul_(0.5)  # a different model at every step
        store.save(step=step, model=model, outer_state={"global_params": torch.zeros(3)}, inner_state={},
                   meta={"tokenizer": tiny_run.data.tokenizer})
        expected[step] = evaluate(model, tokenizer, texts, seq_len=TINY_SEQ)
    (tmp_path / "checkpoints" / "step-00000002" / "outer.safetensors").write_bytes(b"torn")
    curve = checkpoint_curve(tmp_path / "checkpoints", tokenizer=tokenizer, texts=texts, seq_len=TINY_SEQ)
    assert curve == [(1, expected[1]), (3, expected[3])]  # the corrupt step 2 is skipped, not evaluated
    assert expected[1] != expected[3]


def test_shuffled_source_keeps_every_document_in_a_fixed_new_order(tmp_path: Path) -> None:
    ids = [f"doc-{n:02d}" for n in range(40)]
    source = tmp_path / "docs"
    source.mkdir()
    pq.write_table(pa.table({"text": [f"text of {i}" for i in ids], "id": ids}), source / "a.parquet")
    spec = shuffled_source(f"parquet:{source}", tmp_path / "one", seed=10)
    again = shuffled_source(f"parquet:{source}", tmp_path / "two", seed=10)
    rows = pq.read_table(spec.split(":", 1)[1]).to_pylist()
    assert [r["id"] for r in rows] == [r["id"] for r in pq.read_table(again.split(":", 1)[1]).to_pylist()]
    assert sorted(r["id"] for r in rows) == ids and [r["id"] for r in rows] != ids
    assert all(r["text"] == f"text of {r['id']}" for r in rows)
    assert shuffled_source("bundled:fineweb-edu-sample", tmp_path, seed=10) == "bundled:fineweb-edu-sample"


def test_state_sync_prefers_the_diary_and_falls_back_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "peer-1.log"
    log.write_text("2026-01-01 INFO peer.node: downloaded state at outer step 3 in 0.25 s\n")
    diary = [{"event": "state_sync", "seconds": 0.125, "bytes": 4096, "source": "download"}]
    assert state_sync_from(diary, log) == {"seconds": 0.125, "bytes": 4096, "source": "download"}
    assert state_sync_from([], log) == {"seconds": 0.25, "bytes": None, "source": "log"}
    assert state_sync_from([], tmp_path / "missing.log") is None

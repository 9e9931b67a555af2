# SPDX-License-Identifier: AGPL-3.0-or-later
"""What one bench invocation runs: its settings, the codecs compared, the layout (K outer steps, H per peer
count) and the run configs of a network configuration and of a state-sync measurement."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.baseline import single_stage
from lila_net.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
QUICK_CONFIG = REPO / "runs" / "bench-quick.toml"
FULL_CONFIG = REPO / "runs" / "bench-full.toml"
MIN_OUTER_STEPS = 15  # the floor: fewer outer steps make DiLoCo trail for reasons unrelated to the network
REFERENCE_PEERS = 4  # a bench run's diloco.inner_steps is H of a network of this many peers
PEER_COUNTS = (2, 4)
SYNC_PRESETS = ("debug", "lila-20m")
SYNC_INNER_STEPS = 2  # the provider of a state-sync measurement only needs to finish an outer step
SYNC_BATCH = 1
SYNC_SEQ_LEN = 64
SYNC_VAL_DOCS = 1
SYNC_MATCHMAKING_S = 1.0


@dataclass(frozen=True)
class CodecChoice:
    """A [codec] section of the bench runs: ``label`` names it in tables (fp32, e8-4, e8-2, sparse-e8-2);
    ``settings`` are further [codec] settings (the sparse codecs' density, no rotation)."""

    label: str
    name: str
    bits: int
    settings: tuple[tuple[str, Any], ...] = ()


SPARSE = (("density", 0.01), ("hadamard", False))  # SparseLoCo's 1 %, unrotated (rotation hurts top-k)
CODECS = {
    "fp32": CodecChoice("fp32", "fp32", 32),
    "e8-4": CodecChoice("e8-4", "e8", 4),
    "e8-2": CodecChoice("e8-2", "e8", 2),
    "sparse-e8-2": CodecChoice("sparse-e8-2", "sparse-e8", 2, SPARSE),
    "sparse-e8-4": CodecChoice("sparse-e8-4", "sparse-e8", 4, SPARSE),
    # the SparseLoCo-style baseline: 1 % top-k, 2-bit uniform scalar values
    "sparse-int-2": CodecChoice("sparse-int-2", "sparse-int", 2, SPARSE),
}
# Codecs whose error on a real pseudo-gradient is compared: (label, name, options beyond the run's block,
# rotation and dither; for the sparse codecs their own [codec] settings). The Leech codec needs blocks of a
# multiple of 24 coordinates.
LEECH_BLOCK = 96
ERROR_CODECS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fp16", "fp16", {}),
    ("int8", "int8", {}),
    ("int4", "int4", {}),
    ("int2", "int", {"bits": 2}),
    ("e8-4", "e8", {"bits": 4}),
    ("e8-2", "e8", {"bits": 2}),
    ("leech-4", "leech", {"bits": 4, "block": LEECH_BLOCK}),
    ("leech-2", "leech", {"bits": 2, "block": LEECH_BLOCK}),
    ("sparse-e8-2", "sparse-e8", {"bits": 2, **dict(SPARSE)}),
    ("sparse-int-2", "sparse-int", {"bits": 2, **dict(SPARSE)}),
)


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """One bench invocation: which run config, data, peers, codecs and threads."""

    config: Path
    data: str
    peers: tuple[int, ...]
    codecs: tuple[CodecChoice, ...]
    threads_per_peer: int
    baseline_threads: int
    throughput_steps: int
    workdir: Path
    sync_presets: tuple[str, ...]
    evals_per_baseline: int
    error_codecs: tuple[str, ...]
    shuffle: bool = True
    repeats: int = 1


@dataclass(frozen=True)
class Layout:
    """The shape every configuration shares: K outer steps, batch B, seq_len T and the token budget;
    H per peer count so that N × H × B × T × K is the budget for every N."""

    outer_steps: int
    batch_size: int
    seq_len: int
    budget: int
    inner_steps: dict[int, int]

    def tokens_per_outer_step(self, peers: int) -> int:
        """Tokens the whole network trains per outer step (every batch full)."""
        return peers * self.inner_steps[peers] * self.batch_size * self.seq_len


def derive_layout(run: RunConfig, peers: tuple[int, ...]) -> Layout:
    """K and H per peer count from a bench run: its ``inner_steps`` is H of a ``REFERENCE_PEERS``-peer
    network, K = budget / (REFERENCE_PEERS × H × B × T), and N peers take H × REFERENCE_PEERS / N inner
    steps, so every N trains the same tokens in the same K outer steps. Refuses a budget or H that does
    not divide evenly, or fewer than ``MIN_OUTER_STEPS`` outer steps (change the stage's ``tokens``)."""
    _, seq_len, _ = single_stage(run)
    budget = run.curriculum.total_tokens
    h, b = run.diloco.inner_steps, run.diloco.batch_size
    per_step = REFERENCE_PEERS * h * b * seq_len
    if budget % per_step:
        raise ValueError(f"the budget {budget} tokens is not a whole number of outer steps of {REFERENCE_PEERS} "
                         f"peers ({per_step} tokens each); set the stage's tokens to a multiple of {per_step}")
    outer = budget // per_step
    if outer < MIN_OUTER_STEPS:
        raise ValueError(f"the budget gives only {outer} outer steps; the bench needs >= {MIN_OUTER_STEPS}: "
                         "raise the stage's tokens or lower inner_steps/batch_size")
    inner: dict[int, int] = {}
    for n in peers:
        if (REFERENCE_PEERS * h) % n:
            raise ValueError(f"{n} peers cannot split {REFERENCE_PEERS} × H = {REFERENCE_PEERS * h} inner steps "
                             "evenly; choose an inner_steps that they divide")
        inner[n] = REFERENCE_PEERS * h // n
    return Layout(outer_steps=outer, batch_size=b, seq_len=seq_len, budget=budget, inner_steps=inner)


def network_run_config(run: RunConfig, codec: CodecChoice, peers: int, *, inner_steps: int) -> RunConfig:
    """The bench run for one configuration: codec section and H replaced, a name of its own."""
    section = replace(run.codec, name=codec.name, bits=run.codec.bits if codec.name == "fp32" else codec.bits,
                      **dict(codec.settings))
    return replace(run, run=replace(run.run, name=f"{run.run.name}-{peers}p-{codec.label}"), codec=section,
                   diloco=replace(run.diloco, inner_steps=inner_steps))


def sync_run_config(run: RunConfig, preset: str) -> RunConfig:
    """A run that only has to reach an outer step quickly: tiny batches, one short validation text."""
    stage = replace(run.curriculum.stages[0], seq_len=SYNC_SEQ_LEN)
    curriculum = replace(run.curriculum, stages=(stage,))
    diloco = replace(run.diloco, inner_steps=SYNC_INNER_STEPS, batch_size=SYNC_BATCH,
                     matchmaking_time_s=SYNC_MATCHMAKING_S)
    return replace(run, run=replace(run.run, name=f"{run.run.name}-sync-{preset}"),
                   model=replace(run.model, preset=preset), curriculum=curriculum, diloco=diloco,
                   data=replace(run.data, validation_max_docs=SYNC_VAL_DOCS))

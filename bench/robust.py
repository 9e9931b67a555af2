# SPDX-License-Identifier: AGPL-3.0-or-later
"""Poisoned-peer benchmark: DiLoCo with 4 peers, one of which attacks, under ``mean`` and a robust rule.

The attacker computes its pseudo-gradient honestly and then sends (a) NaN, (b) it ×100, (c) it sign-flipped,
or (d) Gaussian noise of the same norm. Every run trains the same small LILA model from the same seed on
the same data; the only difference is the aggregation. Reported: final validation bits per byte of the
global model, its ratio to the clean run (4 honest peers, ``mean``), whether the attacker got banned, and
the round it happened in, and how many honest contributions were rejected and honest peers struck (false
positives).

What is real and what is simulated (stated in the JSON too): the four DiLoCo workers run in this one
process, one after another (inner AdamW steps, pseudo-gradients, the peer's ``OuterOptimizer``); the
aggregation is the real ``peer.averaging`` aggregator applied per part exactly as the all-reduce does (the
vector split with ``part_bounds``, part ``j`` aggregated by member ``j``, who sees every contribution to
it); the accountability is real: each honest owner turns its part's rejections into a ReportStrike
request (``peer.accountability.strike_request``) and the coordinator's pure core (``coordinator.core``,
``strike_witnesses`` = 2, ``strikes_to_ban`` = 3) decides strikes and the ban, after which the other peers
refuse the banned one and it leaves the group. Network transport is not part of this benchmark (see
``bench.averaging`` for that).

    python -m bench.robust --quick --out robust.json
    python -m bench.robust --rounds 20 --inner-steps 20 --aggregator trimmed_mean
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coordinator import core
from coordinator import events as ev
from coordinator.plan import synthetic_plan
from coordinator.settings import ServerSettings
from coordinator.state import PeerState, initial_state
from lila_data import evaluate_bpb, iter_texts, iter_validation_texts, load_tokenizer
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_net.aggregation import AggregationError, Contribution, aggregator_for
from peer.accountability import strike_request
from peer.averaging.allreduce import part_bounds
from peer.averaging.averager import RoundResult
from peer.averaging.matchmaking import Group
from peer.outer import OuterOptimizer, flatten_parameters, load_flat_parameters

SOURCE = "bundled:fineweb-edu-sample"
TOKENIZER = "fineweb-edu-2048"
VALIDATION_FRACTION = 0.1
VAL_DOCS = 16
PEERS = 4
ATTACKER = 3  # index of the attacking peer
ATTACKS = ("nan", "scale100", "sign_flip", "noise")
SCALE = 100.0
SEED = 0
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
OUTER_LR = 0.7
OUTER_MOMENTUM = 0.9
STRIKE_WITNESSES = 2
STRIKES_TO_BAN = 3
NORM_BOUND = 5.0  # the run config's trust.norm_bound default
EVAL_BATCH = 8
TARGET_RATIO = 1.03


@dataclass(frozen=True)
class Scale:
    rounds: int
    inner_steps: int
    batch: int
    seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    inner_lr: float


QUICK = Scale(rounds=12, inner_steps=8, batch=8, seq_len=64, d_model=48, n_layers=2, n_heads=1, inner_lr=2e-2)
FULL = Scale(rounds=30, inner_steps=16, batch=8, seq_len=128, d_model=96, n_layers=3, n_heads=2, inner_lr=1e-2)


@dataclass
class Trust:
    """What the run config's [trust] section carries (``aggregator_for`` reads these two fields)."""

    aggregator: str
    norm_bound: float = NORM_BOUND


def libp2p_id(index: int) -> str:
    """A stand-in libp2p id per peer (base58 alphabet, the length hivemind's ids have)."""
    return "Qm" + "abcdefghij"[index] * 44


def load_data(scale: Scale) -> tuple[Any, list[torch.Tensor], list[str]]:
    tokenizer = load_tokenizer(TOKENIZER)
    train = list(iter_texts(SOURCE, split="train", fraction=VALIDATION_FRACTION))
    val = list(iter_validation_texts(SOURCE, fraction=VALIDATION_FRACTION, max_docs=VAL_DOCS))
    streams: list[list[int]] = [[] for _ in range(PEERS)]
    for index, ids in enumerate(tokenizer.encode_batch(train)):
        streams[index % PEERS].extend([*ids, tokenizer.eos_id])  # each peer its own documents
    return tokenizer, [torch.tensor(s, dtype=torch.long) for s in streams], val


def batch_of(stream: torch.Tensor, generator: torch.Generator, scale: Scale) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, stream.numel() - scale.seq_len - 1, (scale.batch,), generator=generator)
    rows = torch.stack([stream[s : s + scale.seq_len + 1] for s in starts.tolist()])  # [B, T + 1]
    return rows[:, :-1], rows[:, 1:]  # [B, T], [B, T]


def attack(delta: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """What the attacker sends instead of its honest pseudo-gradient ``delta`` ([numel])."""
    if kind == "nan":
        return torch.full_like(delta, math.nan)
    if kind == "scale100":
        return delta * SCALE
    if kind == "sign_flip":
        return -delta
    if kind == "noise":
        noise = torch.randn(delta.shape, generator=generator)  # [numel]
        return noise * (delta.norm() / noise.norm())
    raise ValueError(f"unknown attack {kind!r}; choose one of {ATTACKS}")


def run(
    *, attack_kind: str | None, aggregator: str, scale: Scale, data: tuple[Any, list[torch.Tensor], list[str]]
) -> dict[str, Any]:
    tokenizer, streams, val = data
    started = time.perf_counter()
    torch.manual_seed(SEED)
    config = get_preset(
        "debug", d_model=scale.d_model, n_layers=scale.n_layers, n_heads=scale.n_heads,
        block_size=scale.seq_len, vocab_size=tokenizer.vocab_size,
    )
    model = LilaLM(config)
    outer = OuterOptimizer(flatten_parameters(model), lr=OUTER_LR, momentum=OUTER_MOMENTUM, nesterov=True)
    inner = [
        torch.optim.AdamW(model.parameters(), lr=scale.inner_lr, weight_decay=WEIGHT_DECAY) for _ in range(PEERS)
    ]
    generators = [torch.Generator().manual_seed(SEED + 1 + i) for i in range(PEERS)]
    noise_generator = torch.Generator().manual_seed(SEED + 100)
    rule = aggregator_for(Trust(aggregator))
    ids = [libp2p_id(i) for i in range(PEERS)]
    state = initial_state(
        synthetic_plan([[1]]),
        ServerSettings.of(strike_witnesses=STRIKE_WITNESSES, strikes_to_ban=STRIKES_TO_BAN,
                          lease_timeout_s=1e9).core_config(),
    )
    for i in range(PEERS):
        state, _ = core.apply(state, ev.PeerJoined(f"p{i}", f"peer-{i}"), 0.0)
        state, _ = core.apply(state, ev.CredentialIssued(f"p{i}", ids[i]), 0.0)
    banned_round = None
    honest_rejections = 0
    attacker_rejections = 0
    skipped_parts = 0
    for round_index in range(1, scale.rounds + 1):
        members = [i for i in range(PEERS) if state.peers[f"p{i}"].state is not PeerState.BANNED]
        deltas = {}
        for i in members:
            load_flat_parameters(model, outer.global_params)
            model.train()
            for _ in range(scale.inner_steps):
                inputs, targets = batch_of(streams[i], generators[i], scale)
                loss = model(inputs, targets).loss
                inner[i].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                inner[i].step()
            delta = outer.pseudo_gradient(flatten_parameters(model))  # [numel]
            if attack_kind is not None and i == ATTACKER:
                delta = attack(delta, attack_kind, noise_generator)
            deltas[ids[i]] = delta
        numel = outer.global_params.numel()
        average = torch.zeros(numel)  # [numel]
        group_ids = tuple(sorted(ids[i] for i in members))
        group = Group(round_index, f"{round_index:016x}", group_ids[0], group_ids, group_ids)
        for part, (start, stop) in enumerate(part_bounds(numel, len(group_ids))):
            owner = group_ids[part]
            contributions = [Contribution(peer, deltas[peer][start:stop]) for peer in group_ids]
            try:
                result = rule.aggregate(contributions, numel=stop - start)
            except AggregationError:
                skipped_parts += 1  # the real all-reduce reports the part failed; the round skips it
                continue
            average[start:stop] = result.tensor
            for rejection in result.rejections:
                if rejection.peer_id == ids[ATTACKER] and attack_kind is not None:
                    attacker_rejections += 1
                else:
                    honest_rejections += 1
            if owner == ids[ATTACKER] and attack_kind is not None:
                continue  # the attacker does not report
            evidence = [(part, r) for r in result.rejections]
            if evidence:
                request = strike_request(
                    RoundResult(round_index, "ok", "", group, None, rejections=evidence), evidence
                )
                reported = tuple(
                    ev.StrikeEvidence(e.libp2p_peer_id, e.reason, e.norm_ratio if e.HasField("norm_ratio") else None, e.part)
                    for e in request.evidence
                )
                reporter = f"p{ids.index(owner)}"
                state, _ = core.apply(state, ev.StrikeReported(reporter, round_index, reported), float(round_index))
        outer.step(average)
        for i in members:
            state, _ = core.apply(state, ev.OuterStepReported(f"p{i}", round_index), float(round_index))
        if banned_round is None and state.peers[f"p{ATTACKER}"].state is PeerState.BANNED:
            banned_round = round_index
    load_flat_parameters(model, outer.global_params)
    model.eval()
    bpb = evaluate_bpb(model, tokenizer, val, seq_len=scale.seq_len, batch_size=EVAL_BATCH).bpb
    return {
        "attack": attack_kind or "none",
        "aggregator": aggregator,
        "val_bpb": bpb,
        "attacker_banned": attack_kind is not None and banned_round is not None,
        "banned_at_round": banned_round,
        "attacker_rejections": attacker_rejections,
        "honest_rejections": honest_rejections,
        "honest_strikes": sum(state.peers[f"p{i}"].strikes for i in range(PEERS) if i != ATTACKER),
        "skipped_parts": skipped_parts,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.robust", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer rounds")
    parser.add_argument("--out", help="write the results as JSON")
    parser.add_argument(
        "--aggregator", default="centered_clip", choices=("centered_clip", "trimmed_mean"), help="the robust rule"
    )
    parser.add_argument("--rounds", type=int, help="outer rounds (overrides the scale)")
    parser.add_argument("--inner-steps", type=int, help="inner steps per round (overrides the scale)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = QUICK if args.quick else FULL
    if args.rounds or args.inner_steps:
        scale = Scale(**{**scale.__dict__, "rounds": args.rounds or scale.rounds,
                         "inner_steps": args.inner_steps or scale.inner_steps})
    data = load_data(scale)
    runs = [run(attack_kind=None, aggregator="mean", scale=scale, data=data)]
    runs.append(run(attack_kind=None, aggregator=args.aggregator, scale=scale, data=data))
    for kind in ATTACKS:
        for aggregator in ("mean", args.aggregator):
            runs.append(run(attack_kind=kind, aggregator=aggregator, scale=scale, data=data))
    clean = runs[0]["val_bpb"]
    print(f"{'attack':10} {'aggregator':14} {'val bpb':>8} {'/clean':>7} {'banned':>7} {'round':>6} "
          f"{'rej(att)':>8} {'rej(hon)':>8} {'strk(hon)':>9} {'s':>6}")
    for result in runs:
        result["ratio_to_clean"] = result["val_bpb"] / clean
        print(
            f"{result['attack']:10} {result['aggregator']:14} {result['val_bpb']:8.4f} {result['ratio_to_clean']:7.4f} "
            f"{result['attacker_banned']!s:>7} {result['banned_at_round'] or '-':>6} "
            f"{result['attacker_rejections']:8d} {result['honest_rejections']:8d} {result['honest_strikes']:9d} "
            f"{result['seconds']:6.1f}"
        )
    robust = [r for r in runs if r["aggregator"] == args.aggregator and r["attack"] != "none"]
    ok = all(r["ratio_to_clean"] <= TARGET_RATIO and r["attacker_banned"] for r in robust)
    print(f"target (robust rule within {TARGET_RATIO - 1:.0%} of clean and attacker banned): {'met' if ok else 'MISSED'}")
    if args.out:
        report = {
            "runs": runs,
            "clean_val_bpb": clean,
            "target_met": ok,
            "setup": {
                "peers": PEERS, "attacker": ATTACKER, "scale": scale.__dict__, "robust_rule": args.aggregator,
                "norm_bound": NORM_BOUND, "strike_witnesses": STRIKE_WITNESSES, "strikes_to_ban": STRIKES_TO_BAN,
                "simulated": "4 DiLoCo workers in one process; real aggregators per part, real coordinator core "
                             "for strikes and bans; no network transport",
            },
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Protocol attacks (issue 16; run under the robust rule only, the attacker's contribution stays honest, so
only the protocol is attacked; each row says whether the attack succeeded and, when the attacker is not
banned, why):

* ``state_hijack`` / ``state_hijack_next``: before every round the attacker announces a state of outer step
  10**15 (``_next``: the round's own step, current + 1) whose parameters are garbage (its announced hash is
  theirs, so only a trusted hash can catch it). It also does what any admitted peer can: reports that step
  to the coordinator with the garbage hash (refused beyond the run's step + 1), and publishes a group
  record naming only itself and the garbage hash for that round (the real validators refuse it; nothing
  reads it). Each honest peer decides with the real rules:
  which donors it believes (``peer.round_sync.believed``, the coordinator's step and ban list as a
  ``NetworkView`` fed from the real core's state), whether the network moved on (``moved_on``), and for
  each believed donor whether the downloaded state is loaded (``peer.sync.trusted_hash``: the hash the
  coordinator vouches for, the donor's own only for a step the coordinator counted without a majority,
  nothing beyond its step; and ``accept_download``). Succeeded: an honest peer loaded
  the attacker's parameters.
  Each honest peer also forwards a claim that ``peer.round_sync.false_claims`` finds false (beyond the
  coordinator's step + ``lila_net.claims.FALSE_CLAIM_MARGIN``) to the real core (``ClaimReported``: in the
  network the record is signed by its writer, so one report bans it). ``state_hijack`` is banned that way;
  ``state_hijack_next`` claims one step ahead, which honest peers may do too, so it is not.
* ``group_squat``: the attacker publishes group records naming only itself for this round and the next
  ``SQUAT_AHEAD``, with a garbage hash for them. Each honest peer elects its round's leader with the real
  rule (``peer.averaging.matchmaking.elect_leader`` over the real ``parse_announcements`` of every
  member's announcement, banned ids excluded); group records play no part in it. Succeeded: an honest peer
  sat a round out (no leader, or the attacker elected and free to refuse it).
* ``framing`` / ``framing_2tok``: every round two attacker sessions report a rejected contribution
  (``StrikeReported``) of honest peer 0, and claim in their ``OuterStepReported`` a group that includes it;
  every honest peer reports its outer step with its hash, group size and members as ``peer.after_round``
  does. ``framing``: the two sessions share one join token (the coordinator allows 2 sessions per token);
  the second session does not average. ``framing_2tok``: two join tokens, and both sessions really average
  (the second contributes a copy of the attacker's honest pseudo-gradient): the case the coordinator core
  documents it cannot catch (a lie about a group both liars really were in needs signed group
  transcripts). Succeeded: the honest peer got banned.

Simulated there: the DHT (records are dicts the bench writes), the transport and the downloads (a donor
"serves" its snapshot object), the timing (every honest peer decides after the attacker acted in that
round, and all honest peers hold one shared global state, so they decide alike; a hijack that only some
of them would load is refused as not modelled), and the leader's admission (an honest leader admits every
announced member).

    python -m bench.robust --quick --out robust.json
    python -m bench.robust --rounds 20 --inner-steps 20 --aggregator trimmed_mean
    python -m bench.robust --quick --attacks state_hijack state_hijack_next group_squat framing framing_2tok
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from coordinator import core
from coordinator import events as ev
from coordinator.plan import synthetic_plan
from coordinator.settings import ServerSettings
from coordinator.splits import step_majority
from coordinator.state import CoordinatorState, PeerState, initial_state
from lila_data import evaluate_bpb, iter_texts, iter_validation_texts, load_tokenizer
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_net.aggregation import AggregationError, Contribution, aggregator_for
from peer.accountability import strike_request
from peer.averaging.allreduce import part_bounds
from peer.averaging.averager import RoundResult
from peer.averaging.config import AveragingConfig
from peer.averaging.matchmaking import (
    DIRECT,
    Group,
    announcement,
    elect_leader,
    parse_announcements,
)
from peer.averaging.state_format import StateSnapshot
from peer.averaging.state_sync import Donor, DownloadResult
from peer.network_view import NetworkView
from peer.outer import OuterOptimizer, flatten_parameters, load_flat_parameters, params_sha256
from peer.round_sync import believed, false_claims, moved_on
from peer.sync import accept_download, trusted_hash

SOURCE = "bundled:fineweb-edu-sample"
TOKENIZER = "fineweb-edu-2048"
VALIDATION_FRACTION = 0.1
VAL_DOCS = 16
PEERS = 4
ATTACKER = 3  # index of the attacking peer
ATTACKS = ("nan", "scale100", "sign_flip", "noise")  # what the attacker sends instead of its contribution
HIJACKS = ("state_hijack", "state_hijack_next")
FRAMINGS = ("framing", "framing_2tok")
PROTOCOL_ATTACKS = (*HIJACKS, "group_squat", *FRAMINGS)  # issue 16
HIJACK_STEP = 10**15  # the outer step state_hijack claims
SQUAT_AHEAD = 3  # group_squat publishes records for this round and this many next ones
ACCUSED = 0  # the honest peer the framing attacks accuse
FRAMED_REASON = "norm_ratio"  # what the framing sessions say they rejected (the aggregators' REASON_NORM)
FRAMED_RATIO = 50.0
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


MAX_GROUP_SIZE = AveragingConfig().max_group_size
GARBAGE_STD = 1.0  # the hijacker's parameters: Gaussian noise of this standard deviation
NO_BAN_WHY = {
    "state_hijack": "a claim beyond the coordinator's step + 1 is ignored by every peer; only one beyond "
                    "lila_net.claims.FALSE_CLAIM_MARGIN is forwarded and bans its writer",
    "state_hijack_next": "announcing a state and reporting a step are allowed to any admitted peer (one token "
                         "alone does not move the run's step nor vouch for a hash); nothing reports the garbage "
                         "state, so nothing bans for it",
    "group_squat": "the real DHT's validators refuse group records (the bench writes them anyway) and "
                   "matchmaking never reads them; nothing reports the attempt, so there is no ban for it",
    "framing": "false strike reports are discarded (witnesses counted per join token; a report the accused's "
               "own group account contradicts is withdrawn) but not punished: the coordinator cannot tell a "
               "false report from a true one",
    "framing_2tok": "both liars really averaged with the accused: without signed group transcripts the "
                    "coordinator cannot tell their reports from true ones (coordinator.core docstring, 'Not "
                    "covered'), so nobody is banned for them",
}


class NotModelled(RuntimeError):
    """The run reached a case the simulation cannot represent (a hijack only some honest peers load)."""


@dataclass(frozen=True)
class Session:
    """One coordinator session of the simulation: its libp2p id, join token, whose DiLoCo worker's
    pseudo-gradient it contributes (``data``) and whether it averages."""

    peer_id: str
    libp2p: str
    token: str
    data: int
    averages: bool = True


def sessions_for(kind: str | None) -> list[Session]:
    """The 4 peers (each its own join token), plus the attacker's second session for the framing attacks:
    same token and not averaging (``framing``), or its own token and averaging (``framing_2tok``)."""
    sessions = [Session(f"p{i}", libp2p_id(i), f"t{i}", i) for i in range(PEERS)]
    if kind == "framing":
        sessions.append(Session(f"p{PEERS}", libp2p_id(PEERS), f"t{ATTACKER}", ATTACKER, averages=False))
    elif kind == "framing_2tok":
        sessions.append(Session(f"p{PEERS}", libp2p_id(PEERS), f"t{PEERS}", ATTACKER))
    return sessions


@dataclass
class Dht:
    """The DHT records the protocol attacks touch (simulated: dicts the bench writes, read through the
    peers' real pure rules)."""

    groups: dict[int, dict[str, bytes]] = field(default_factory=dict)  # round -> publisher -> group record
    hashes: dict[int, dict[str, str]] = field(default_factory=dict)  # round -> peer -> published params hash

    def publish_group(self, group: Group) -> None:
        record = json.dumps(group.to_json(), separators=(",", ":")).encode()
        self.groups.setdefault(group.round_index, {})[group.leader] = record

    def publish_hash(self, round_index: int, peer: str, digest: str) -> None:
        self.hashes.setdefault(round_index, {})[peer] = digest


def solo_group(round_index: int, peer: str) -> Group:
    """A group record naming only ``peer`` (what a squatter publishes)."""
    return Group(round_index, f"{round_index % 2**63:016x}", peer, (peer,), (peer,))


def view_of(state: CoordinatorState) -> NetworkView:
    """What the coordinator's Join and Heartbeat answers tell a peer: the run's step and its majority hash
    (``coordinator.server``: ``splits.step_majority``)."""
    return NetworkView(step=state.outer_step, sha256=step_majority(state.splits, state.peers, state.outer_step))


def revoked(state: CoordinatorState) -> frozenset[str]:
    """The libp2p ids of banned peers: the ban list peers refuse."""
    return frozenset(i for p in state.peers.values() if p.state is PeerState.BANNED for i in p.libp2p_ids)


def snapshot_of(outer: OuterOptimizer) -> StateSnapshot:
    """The state an honest peer serves (``peer.after_round.publish``)."""
    return StateSnapshot({"global_params": outer.global_params, "momentum_buffer": outer.momentum_buffer},
                         {"outer_step": outer.step_count, "params_sha256": outer.params_hash()})


def hijack_round(
    state: CoordinatorState, round_index: int, *, claimed: int, outer: OuterOptimizer, attacker: Session,
    honest: Sequence[Session], dht: Dht, generator: torch.Generator,
) -> tuple[CoordinatorState, list[tuple[str, str]]]:
    """One round of a state hijack: the attacker announces, reports and publishes a garbage state of outer
    step ``claimed``; then each honest peer runs the real barrier and download rules. Returns the new
    coordinator state and ``(honest peer, where its trusted hash came from)`` for each peer that loaded the
    attacker's parameters."""
    numel = outer.global_params.numel()
    garbage = torch.randn(numel, generator=generator) * GARBAGE_STD  # [numel]
    digest = params_sha256(garbage)
    bad = StateSnapshot({"global_params": garbage, "momentum_buffer": torch.zeros(numel)},
                        {"outer_step": claimed, "params_sha256": digest})
    now = float(round_index)
    state, _ = core.apply(state, ev.OuterStepReported(attacker.peer_id, claimed, params_sha256=digest), now)
    dht.publish_group(solo_group(claimed, attacker.libp2p))
    dht.publish_hash(claimed, attacker.libp2p, digest)
    view = view_of(state)
    for me in honest:  # RoundSync.donors forwards a false claim's signed record; one report bans its writer
        for donor in false_claims([Donor(attacker.libp2p, claimed)], view_step=view.step):
            state, _ = core.apply(state, ev.ClaimReported(me.peer_id, donor.peer_id, donor.outer_step), now)
    banned = revoked(state)
    peer = SimpleNamespace(network=SimpleNamespace(round_sync=SimpleNamespace(view=view)))
    mine = snapshot_of(outer)
    loads = []
    for me in honest:
        step = outer.step_count
        served = {s.libp2p: mine for s in honest if s is not me} | {attacker.libp2p: bad}
        announced = sorted((Donor(d, int(snap.metadata["outer_step"])) for d, snap in served.items()),
                           key=lambda d: (-d.outer_step, d.peer_id))  # StateSync.find_donors' order
        target = moved_on(believed(announced, view_step=view.step, floor=step, banned=banned), round_index)
        if target is None:
            continue  # the barrier sees nobody ahead: the peer averages the round
        for donor in believed(announced, view_step=view.step, floor=step, banned=banned):  # download_state
            got = DownloadResult(served[donor.peer_id], donor.peer_id)
            at = int(got.snapshot.metadata["outer_step"])
            if not believed([Donor(donor.peer_id, at)], view_step=view.step, floor=step):
                continue  # served a step beyond the coordinator's + 1
            expected = trusted_hash(peer, at)  # type: ignore[arg-type]  (the parts of a Peer it reads)
            if expected is None:
                continue
            if accept_download(got, target, sha256=expected):
                if got.snapshot is bad:
                    loads.append((me.peer_id, "coordinator"))
                break
    if loads and len(loads) != len(honest):
        raise NotModelled(f"round {round_index}: only {len(loads)} of {len(honest)} honest peers loaded the hijack")
    if loads:
        outer.load_state_dict({**bad.tensors, "step_count": torch.tensor(claimed)})
    return state, loads


def squat_round(
    round_index: int, *, members: Sequence[Session], attacker: Session, banned: frozenset[str], dht: Dht,
    garbage_digest: str,
) -> int:
    """One round of group squatting: the attacker publishes group records naming only itself (and a
    garbage hash) for this round and the next ``SQUAT_AHEAD``; then each honest member elects its leader
    with the real rule. Returns how many honest members sit the round out."""
    for ahead in range(round_index, round_index + SQUAT_AHEAD + 1):
        dht.publish_group(solo_group(ahead, attacker.libp2p))
        dht.publish_hash(ahead, attacker.libp2p, garbage_digest)
    records = {m.libp2p: announcement(client=False) for m in members}  # every member announces the round
    sat_out = 0
    for me in members:
        if me.data == ATTACKER:
            continue
        candidates = parse_announcements(records)
        candidates[me.libp2p] = DIRECT
        leader = elect_leader(candidates, excluded=banned)
        if leader is None or leader == attacker.libp2p:
            sat_out += 1  # no leader, or the attacker leads and may refuse us
    return sat_out


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
    sessions = sessions_for(attack_kind)
    attackers = [s for s in sessions if s.data == ATTACKER]
    honest = [s for s in sessions if s.data != ATTACKER]
    attacker_ids = {s.libp2p for s in attackers}
    reporter_of = {s.libp2p: s.peer_id for s in sessions}
    accused = sessions[ACCUSED]
    dht = Dht()
    state = initial_state(
        synthetic_plan([[1]]),
        ServerSettings.of(strike_witnesses=STRIKE_WITNESSES, strikes_to_ban=STRIKES_TO_BAN,
                          lease_timeout_s=1e9).core_config(),
    )
    for s in sessions:
        state, _ = core.apply(state, ev.PeerJoined(s.peer_id, f"peer-{s.peer_id}", token_id=s.token), 0.0)
        state, _ = core.apply(state, ev.CredentialIssued(s.peer_id, s.libp2p), 0.0)
    banned_round = None
    honest_banned_round = None
    honest_rejections = 0
    attacker_rejections = 0
    skipped_parts = 0
    hijack: list[tuple[int, str, str]] = []  # (round, honest peer, trusted hash source) per loaded hijack
    sat_out = 0
    garbage_digest = params_sha256(torch.full((1,), math.nan))
    for round_index in range(1, scale.rounds + 1):
        banned = revoked(state)
        live = [s for s in sessions if state.peers[s.peer_id].state is not PeerState.BANNED]
        if attack_kind in HIJACKS and attackers[0] in live:
            claimed = HIJACK_STEP if attack_kind == "state_hijack" else outer.step_count + 1
            state, loads = hijack_round(state, round_index, claimed=claimed, outer=outer, attacker=attackers[0],
                                        honest=[s for s in live if s.data != ATTACKER], dht=dht,
                                        generator=noise_generator)
            if loads:
                hijack.extend((round_index, peer, source) for peer, source in loads)
                continue  # every honest peer re-synced to the hijacked state instead of averaging the round
        members = [s for s in live if s.averages]
        if attack_kind == "group_squat" and attackers[0] in live:
            sat_out += squat_round(round_index, members=members, attacker=attackers[0], banned=banned, dht=dht,
                                   garbage_digest=garbage_digest)
        trained = {}
        for i in sorted({s.data for s in members}):
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
            if attack_kind in ATTACKS and i == ATTACKER:
                delta = attack(delta, attack_kind, noise_generator)
            trained[i] = delta
        deltas = {s.libp2p: trained[s.data] for s in members}
        numel = outer.global_params.numel()
        average = torch.zeros(numel)  # [numel]
        group_ids = tuple(sorted(deltas))
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
                if rejection.peer_id in attacker_ids and attack_kind in ATTACKS:
                    attacker_rejections += 1
                else:
                    honest_rejections += 1
            if owner in attacker_ids and attack_kind is not None:
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
                state, _ = core.apply(state, ev.StrikeReported(reporter_of[owner], round_index, reported), float(round_index))
        outer.step(average)
        digest = outer.params_hash()
        if attack_kind in FRAMINGS:
            for s in attackers:  # both sessions: a rejection of the accused's contribution, and a group with it
                part = group_ids.index(s.libp2p) if s.libp2p in group_ids else 0
                evidence = (ev.StrikeEvidence(accused.libp2p, FRAMED_REASON, FRAMED_RATIO, part),)
                state, _ = core.apply(state, ev.StrikeReported(s.peer_id, round_index, evidence), float(round_index))
                claim = frozenset(group_ids) | {s.libp2p, accused.libp2p}
                state, _ = core.apply(state, ev.OuterStepReported(s.peer_id, round_index, digest, len(claim), claim),
                                      float(round_index))
        for s in members:
            if s.data == ATTACKER and attack_kind in (*HIJACKS, *FRAMINGS):
                continue  # the hijacker reported its own step already; the framers reported above
            report = ev.OuterStepReported(s.peer_id, round_index, digest, len(group_ids), frozenset(group_ids))
            state, _ = core.apply(state, report, float(round_index))  # as peer.after_round.report_outer_step
        if len(group_ids) > 1:
            dht.publish_group(group)  # the leader's record (Matchmaker._lead)
        for peer in group_ids:
            if not (attack_kind == "group_squat" and peer in attacker_ids):
                dht.publish_hash(round_index, peer, digest)  # round verification (verify.publish_hash)
        if banned_round is None and state.peers[f"p{ATTACKER}"].state is PeerState.BANNED:
            banned_round = round_index
        if honest_banned_round is None and any(state.peers[s.peer_id].state is PeerState.BANNED for s in honest):
            honest_banned_round = round_index
    load_flat_parameters(model, outer.global_params)
    model.eval()
    bpb = evaluate_bpb(model, tokenizer, val, seq_len=scale.seq_len, batch_size=EVAL_BATCH).bpb
    out: dict[str, Any] = {
        "attack": attack_kind or "none",
        "aggregator": aggregator,
        "val_bpb": bpb,
        "attacker_banned": attack_kind is not None and banned_round is not None,
        "banned_at_round": banned_round,
        "attacker_rejections": attacker_rejections,
        "honest_rejections": honest_rejections,
        "honest_strikes": sum(state.peers[s.peer_id].strikes for s in honest),
        "skipped_parts": skipped_parts,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if attack_kind in HIJACKS:
        out.update(attack_succeeded=bool(hijack), hijack_loads=len(hijack),
                   hijack_first_round=hijack[0][0] if hijack else None,
                   hijack_trusted_hash_from=hijack[0][2] if hijack else None)
    elif attack_kind == "group_squat":
        out.update(attack_succeeded=sat_out > 0, honest_sat_out=sat_out)
    elif attack_kind in FRAMINGS:
        out.update(attack_succeeded=honest_banned_round is not None, honest_banned_at_round=honest_banned_round,
                   accused_strikes=state.peers[accused.peer_id].strikes,
                   attacker_tokens=len({s.token for s in attackers}))
    if attack_kind in PROTOCOL_ATTACKS:
        if not out["attacker_banned"]:
            out["why"] = NO_BAN_WHY[attack_kind]
        out["simulated"] = ("the DHT (dicts), transport, downloads and timing; the decisions are the peers' real "
                            "pure rules and the coordinator's real core (module docstring)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.robust", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer rounds")
    parser.add_argument("--out", help="write the results as JSON (and the protocol attacks' table beside it, .md)")
    parser.add_argument(
        "--aggregator", default="centered_clip", choices=("centered_clip", "trimmed_mean"), help="the robust rule"
    )
    parser.add_argument("--attacks", nargs="+", choices=(*ATTACKS, *PROTOCOL_ATTACKS),
                        default=[*ATTACKS, *PROTOCOL_ATTACKS], help="which attacks to run (default: all)")
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
    for kind in (k for k in ATTACKS if k in args.attacks):
        for aggregator in ("mean", args.aggregator):
            runs.append(run(attack_kind=kind, aggregator=aggregator, scale=scale, data=data))
    for kind in (k for k in PROTOCOL_ATTACKS if k in args.attacks):
        runs.append(run(attack_kind=kind, aggregator=args.aggregator, scale=scale, data=data))
    clean = runs[0]["val_bpb"]
    print(f"{'attack':17} {'aggregator':14} {'val bpb':>8} {'/clean':>7} {'banned':>7} {'round':>6} "
          f"{'rej(att)':>8} {'rej(hon)':>8} {'strk(hon)':>9} {'s':>6}")
    for result in runs:
        result["ratio_to_clean"] = result["val_bpb"] / clean
        print(
            f"{result['attack']:17} {result['aggregator']:14} {result['val_bpb']:8.4f} {result['ratio_to_clean']:7.4f} "
            f"{result['attacker_banned']!s:>7} {result['banned_at_round'] or '-':>6} "
            f"{result['attacker_rejections']:8d} {result['honest_rejections']:8d} {result['honest_strikes']:9d} "
            f"{result['seconds']:6.1f}"
        )
    robust = [r for r in runs if r["aggregator"] == args.aggregator and r["attack"] in ATTACKS]
    ok = all(r["ratio_to_clean"] <= TARGET_RATIO and r["attacker_banned"] for r in robust) if robust else None
    if robust:
        print(f"target (robust rule within {TARGET_RATIO - 1:.0%} of clean and attacker banned): "
              f"{'met' if ok else 'MISSED'}")
    protocol = [r for r in runs if r["attack"] in PROTOCOL_ATTACKS]
    protocol_ok = (all(r["ratio_to_clean"] <= TARGET_RATIO and not r["attack_succeeded"] for r in protocol)
                   if protocol else None)
    table = protocol_table(protocol)
    if protocol:
        print("\n" + table, end="")
        print(f"target (protocol attacks: within {TARGET_RATIO - 1:.0%} of clean and not succeeded): "
              f"{'met' if protocol_ok else 'MISSED'}")
    if args.out:
        report = {
            "runs": runs,
            "clean_val_bpb": clean,
            "target_met": ok,
            "protocol_target_met": protocol_ok,
            "setup": {
                "peers": PEERS, "attacker": ATTACKER, "scale": scale.__dict__, "robust_rule": args.aggregator,
                "norm_bound": NORM_BOUND, "strike_witnesses": STRIKE_WITNESSES, "strikes_to_ban": STRIKES_TO_BAN,
                "attacks": [k for k in (*ATTACKS, *PROTOCOL_ATTACKS) if k in args.attacks],
                "hijack_step": HIJACK_STEP, "squat_ahead": SQUAT_AHEAD, "accused": ACCUSED,
                "simulated": "4 DiLoCo workers in one process; real aggregators per part, real coordinator core "
                             "for strikes and bans; no network transport",
                "simulated_protocol_attacks": "the DHT (dicts the bench writes), transport, state downloads and "
                                              "timing (the attacker acts before the honest peers each round); the "
                                              "decisions are the real pure rules: peer.round_sync.believed and "
                                              "moved_on, peer.sync.trusted_hash and accept_download, "
                                              "peer.averaging.matchmaking.elect_leader, coordinator.core.apply",
            },
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        if protocol:
            md = Path(args.out).with_suffix(".md")
            md.write_text(f"# python -m bench.robust {' '.join(argv if argv is not None else sys.argv[1:])}\n\n"
                          f"Clean run (4 honest peers, mean): val bpb {clean:.4f}. Simulated: "
                          f"{report['setup']['simulated_protocol_attacks']}.\n\n{table}")
            print(f"wrote {md}")
    return 0


def protocol_table(runs: Sequence[dict[str, Any]]) -> str:
    """The protocol attacks' rows as a Markdown table (``ratio_to_clean`` already set)."""
    lines = ["| attack | val bpb | /clean | succeeded | attacker banned | measure | why not banned |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        if r["attack"] in HIJACKS:
            measure = (f"honest loads of the attacker's state: {r['hijack_loads']}"
                       + (f" (first round {r['hijack_first_round']}, trusted hash from "
                          f"{r['hijack_trusted_hash_from']})" if r["hijack_loads"] else ""))
        elif r["attack"] == "group_squat":
            measure = f"honest sit-outs: {r['honest_sat_out']}"
        else:
            measure = (f"{r['attacker_tokens']} token(s); honest peer {ACCUSED} banned at round "
                       f"{r['honest_banned_at_round'] or '-'}, strikes {r['accused_strikes']}")
        lines.append(f"| {r['attack']} | {r['val_bpb']:.4f} | {r['ratio_to_clean']:.4f} | {r['attack_succeeded']} | "
                     f"{r['attacker_banned']} | {measure} | {r.get('why', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

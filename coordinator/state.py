# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's state: immutable records that the core replaces, never mutates.

A transition copies only the mappings it changes (copy-on-write), so unchanged parts are shared
between the old and the new state and ``old.peers is new.peers`` tells storage nothing changed there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from coordinator.plan import RunPlan, ShardKey


class PeerState(str, Enum):
    """Life cycle of a peer (names match the proto's ``PeerState`` without the prefix)."""

    JOINING = "joining"
    ACTIVE = "active"
    LOST = "lost"
    LEFT = "left"
    BANNED = "banned"


LIVE_STATES = frozenset({PeerState.JOINING, PeerState.ACTIVE})


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    """Timing and policy of the scheduler: its view of the run config's ``[coordinator]`` and ``[trust]``
    sections, which check every value and say how to tune it (built by
    ``coordinator.settings.ServerSettings.core_config``). ``retry_after_s`` is what a peer that got no
    shard is told to wait: the heartbeat interval."""

    lease_timeout_s: float
    stall_timeout_s: float
    max_leases_per_peer: int
    outer_step_quorum: int
    retry_after_s: float
    strikes_to_ban: int
    strike_witnesses: int
    strike_memory_rounds: int
    max_sessions_per_token: int
    max_tokens_per_doc: int


@dataclass(frozen=True, slots=True)
class Position:
    """Exact resume position in a shard (same meaning as ``lila_data.ResumePosition``)."""

    docs_consumed: int = 0
    tokens_consumed: int = 0

    def covers(self, other: Position) -> bool:
        """True if this position is at or beyond ``other`` in both documents and tokens."""
        return self.docs_consumed >= other.docs_consumed and self.tokens_consumed >= other.tokens_consumed


@dataclass(frozen=True, slots=True)
class Hardware:
    """What a peer said about its machine at join time (display only, never trusted for scheduling)."""

    device_type: str = ""
    device_name: str = ""
    memory_bytes: int = 0
    cpu_cores: int = 0


@dataclass(frozen=True, slots=True)
class PeerMetrics:
    """Latest metrics a peer reported. ``uplink_bytes_per_s`` / ``downlink_bytes_per_s``: its measured
    link rates to other peers (0: not measured yet); ``reachability``: how other peers reach it
    (``direct``, ``relayed``, ``client``; empty from older peers)."""

    outer_step: int
    loss: float
    val_bpb: float | None
    tokens_per_s: float
    tokens_processed: int
    bytes_sent: int
    bytes_received: int
    reported_at: float
    uplink_bytes_per_s: float = 0.0
    downlink_bytes_per_s: float = 0.0
    reachability: str = ""


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One peer. ``tokens`` is its credit: tokens of reported progress, each counted once.
    ``libp2p_ids``: the libp2p identities it got averaging credentials for (newest last; a restarted
    peer process gets a new one), revoked together when it is banned. ``strike_rounds``: the rounds of
    its latest strikes (at most ``strikes_to_ban``), for the ban rule. ``token_id``: the join token it
    joined with (empty for records from before tokens were recorded: :attr:`token_key` is then its peer
    id); quorums and strike witnesses count join tokens, not peers, and a ban applies to the token."""

    peer_id: str
    name: str
    hardware: Hardware
    client_version: str
    metrics_address: str
    state: PeerState
    joined_at: float
    last_seen: float
    start_outer_step: int = 0
    outer_step: int = -1
    tokens: int = 0
    last_report_seq: int = 0
    strikes: int = 0
    phase: str = ""
    ban_reason: str = ""
    metrics: PeerMetrics | None = None
    libp2p_ids: tuple[str, ...] = ()
    strike_rounds: tuple[int, ...] = ()
    token_id: str = ""

    @property
    def token_key(self) -> str:
        """What counts once in quorums and among strike witnesses: its join token (or its peer id)."""
        return self.token_id or self.peer_id


@dataclass(frozen=True, slots=True)
class Lease:
    """A shard held by a peer. ``start`` is where the lease began, ``position`` the last reported one."""

    lease_id: str
    stage: int
    shard_id: str
    peer_id: str
    start: Position
    position: Position
    granted_at: float
    renewed_at: float

    @property
    def key(self) -> ShardKey:
        return (self.stage, self.shard_id)


@dataclass(frozen=True, slots=True)
class QueuedShard:
    """A shard handed back (released or expired) waiting for its next holder, with where to resume."""

    position: Position
    order: int


@dataclass(frozen=True, slots=True)
class StrikeTally:
    """Reports against one peer for one round: who reported it, and whether the round already counted.
    ``reporters``: peer ids whose evidence counts (see ``coordinator.core``'s trust rules)."""

    reporters: frozenset[str]
    counted: bool = False


_EMPTY: Mapping[Any, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class HashReport:
    """What one peer reported with an outer step: the sha256 of its parameters after it (hex; empty from
    older peers) and how many peers averaged in the round that produced it (0: not said)."""

    params_sha256: str
    group_size: int


@dataclass(frozen=True, slots=True)
class Split:
    """An outer step after which the peers do not hold the same parameters (see :mod:`coordinator.splits`).

    ``hashes``: each distinct parameter hash with the number of peers that reported it, most peers first
    (ties by hash). ``groups_of_one``: peers that averaged alone for this step; ``active_peers``: active
    peers when it was last evaluated. ``majority``: the hash most peers hold, empty on a tie."""

    step: int
    hashes: tuple[tuple[str, int], ...]
    groups_of_one: int
    active_peers: int
    majority: str
    at: float


@dataclass(frozen=True, slots=True)
class SplitWatch:
    """The parameter hashes of the last outer steps, for split detection (:mod:`coordinator.splits`).

    ``steps``: outer step -> peer id -> that peer's latest report for the step (only the last
    ``coordinator.splits.SPLIT_HISTORY_STEPS`` steps). ``split_steps``: the steps among them already
    found split (each counts once). ``found``: how many steps were found split; ``latest``: the split
    of the highest such step, as last evaluated."""

    steps: Mapping[int, Mapping[str, HashReport]] = field(default_factory=lambda: _EMPTY)
    split_steps: frozenset[int] = frozenset()
    found: int = 0
    latest: Split | None = None


@dataclass(frozen=True)
class CoordinatorState:
    """Everything the scheduler knows. Build the first one with :func:`initial_state`.

    ``cursors[s]`` is the index of the next never-leased shard of stage ``s``; shards before it are
    leased, queued in ``returned``, completed or skipped. ``stage_index == len(plan.stages)`` once the
    run is finished. ``strike_reports`` holds the witnesses of recent rounds, keyed by (accused peer id,
    round); it is volatile (not stored): after a restart, partial tallies start over, while counted
    strikes live on in the peer records. ``splits`` (the parameter hashes of recent outer steps) is
    volatile too: after a restart, split detection and its count start over. ``groups`` (volatile, recent
    rounds only) holds, per (peer id, round), the libp2p ids the peer said it averaged with in that round.
    ``growth_steps[s]``: the outer step after whose round the model grows into stage ``s``'s shape (-1:
    stage ``s`` grows nothing, or has not begun); set once, when the stage begins (``coordinator.core``).
    """

    plan: RunPlan
    config: CoreConfig
    peers: Mapping[str, PeerRecord] = field(default_factory=lambda: _EMPTY)
    leases: Mapping[str, Lease] = field(default_factory=lambda: _EMPTY)
    returned: Mapping[ShardKey, QueuedShard] = field(default_factory=lambda: _EMPTY)
    strike_reports: Mapping[tuple[str, int], StrikeTally] = field(default_factory=lambda: _EMPTY)
    groups: Mapping[tuple[str, int], frozenset[str]] = field(default_factory=lambda: _EMPTY)
    splits: SplitWatch = field(default_factory=SplitWatch)
    cursors: tuple[int, ...] = ()
    stage_index: int = 0
    stage_tokens: tuple[int, ...] = ()
    stage_completed: tuple[int, ...] = ()
    growth_steps: tuple[int, ...] = ()
    global_tokens: int = 0
    outer_step: int = 0
    lease_counter: int = 0
    queue_counter: int = 0

    @property
    def finished(self) -> bool:
        """True once every stage is done."""
        return self.stage_index >= len(self.plan.stages)

    @property
    def announced_growths(self) -> tuple[int, ...]:
        """The outer steps of the growths announced so far, in curriculum order (what peers are told)."""
        return tuple(step for step in self.growth_steps if step >= 0)

    def leases_of(self, peer_id: str) -> list[Lease]:
        """Leases held by ``peer_id``, oldest first."""
        return [lease for lease in self.leases.values() if lease.peer_id == peer_id]


def initial_state(plan: RunPlan, config: CoreConfig) -> CoordinatorState:
    """The state of a fresh run: no peers, no leases, every shard of every stage waiting."""
    n = len(plan.stages)
    return CoordinatorState(
        plan=plan,
        config=config,
        cursors=(0,) * n,
        stage_tokens=(0,) * n,
        stage_completed=(0,) * n,
        growth_steps=(-1,) * n,
    )

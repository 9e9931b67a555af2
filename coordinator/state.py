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

DEFAULT_LEASE_TIMEOUT_S = 30.0
DEFAULT_STALL_TIMEOUT_S = 3600.0
DEFAULT_RETRY_AFTER_S = 5.0
DEFAULT_STRIKES_TO_BAN = 3
DEFAULT_STRIKE_WITNESSES = 2
DEFAULT_STRIKE_MEMORY_ROUNDS = 50


class PeerState(str, Enum):
    """Life cycle of a peer (names match the proto's ``PeerState`` without the prefix)."""

    JOINING = "joining"
    ACTIVE = "active"
    LOST = "lost"
    LEFT = "left"
    BANNED = "banned"


LIVE_STATES = frozenset({PeerState.JOINING, PeerState.ACTIVE})


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Timing and policy of the scheduler.

    ``lease_timeout_s``: a lease expires this long after its holder's last call, and the holder counts
    as lost; too short loses shards of slow-but-alive peers, too long leaves a crashed peer's shard idle.
    ``stall_timeout_s``: a lease also expires if its holder heartbeats but reports no progress for this
    long (a stuck peer); set it well above the time a peer needs between two progress reports.
    ``max_leases_per_peer``: shards one peer may hold at once (1 unless peers prefetch).
    ``outer_step_quorum``: how many peers must report an outer step before it becomes the run's step.
    ``strikes_to_ban``: strikes (rounds in which the peer's contribution was rejected) after which it
    is banned. 3 tolerates a peer with one broken round (a transient GPU fault); 1 bans at the first.
    ``strike_witnesses``: distinct peers that must report the same peer in the same round before that
    round counts as a strike. Each part owner reports only what it rejected itself, so an attacker is
    reported by every honest owner of its group, while one lying peer alone cannot get honest peers
    banned. 1 lets any single admitted peer ban anyone (only for trusted groups); in groups of two,
    a value of 2 means nobody is ever banned automatically.
    ``strike_memory_rounds``: a ban needs ``strikes_to_ban`` strikes within this many rounds, so rare
    false alarms against an honest peer (its update happened to point elsewhere) never add up over a
    long run, while an attacker, struck every round it attacks, is banned after ``strikes_to_ban`` rounds.
    Too small and an attacker that strikes only now and then escapes; too large and false alarms add up.
    ``retry_after_s``: what a peer that got no shard is told to wait.
    """

    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    max_leases_per_peer: int = 1
    outer_step_quorum: int = 1
    strikes_to_ban: int = DEFAULT_STRIKES_TO_BAN
    retry_after_s: float = DEFAULT_RETRY_AFTER_S
    strike_witnesses: int = DEFAULT_STRIKE_WITNESSES
    strike_memory_rounds: int = DEFAULT_STRIKE_MEMORY_ROUNDS

    def __post_init__(self) -> None:
        if self.lease_timeout_s <= 0 or self.stall_timeout_s <= 0 or self.retry_after_s <= 0:
            raise ValueError("CoreConfig: lease_timeout_s, stall_timeout_s and retry_after_s must be > 0")
        if (
            self.max_leases_per_peer < 1
            or self.outer_step_quorum < 1
            or self.strikes_to_ban < 1
            or self.strike_witnesses < 1
            or self.strike_memory_rounds < 1
        ):
            raise ValueError(
                "CoreConfig: max_leases_per_peer, outer_step_quorum, strikes_to_ban, strike_witnesses and "
                "strike_memory_rounds must be >= 1"
            )


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
    """Latest metrics a peer reported."""

    outer_step: int
    loss: float
    val_bpb: float | None
    tokens_per_s: float
    tokens_processed: int
    bytes_sent: int
    bytes_received: int
    reported_at: float


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One peer. ``tokens`` is its credit: tokens of reported progress, each counted once.
    ``libp2p_ids``: the libp2p identities it got averaging credentials for (newest last; a restarted
    peer process gets a new one), revoked together when it is banned. ``strike_rounds``: the rounds of
    its latest strikes (at most ``strikes_to_ban``), for the ban rule."""

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
    """Reports against one peer for one round: who reported it, and whether the round already counted."""

    reporters: frozenset[str]
    counted: bool = False


_EMPTY: Mapping[Any, Any] = MappingProxyType({})


@dataclass(frozen=True)
class CoordinatorState:
    """Everything the scheduler knows. Build the first one with :func:`initial_state`.

    ``cursors[s]`` is the index of the next never-leased shard of stage ``s``; shards before it are
    leased, queued in ``returned``, completed or skipped. ``stage_index == len(plan.stages)`` once the
    run is finished. ``strike_reports`` holds the witnesses of recent rounds, keyed by (accused peer id,
    round); it is volatile (not stored): after a restart, partial tallies start over, while counted
    strikes live on in the peer records.
    """

    plan: RunPlan
    config: CoreConfig
    peers: Mapping[str, PeerRecord] = field(default_factory=lambda: _EMPTY)
    leases: Mapping[str, Lease] = field(default_factory=lambda: _EMPTY)
    returned: Mapping[ShardKey, QueuedShard] = field(default_factory=lambda: _EMPTY)
    strike_reports: Mapping[tuple[str, int], StrikeTally] = field(default_factory=lambda: _EMPTY)
    cursors: tuple[int, ...] = ()
    stage_index: int = 0
    stage_tokens: tuple[int, ...] = ()
    stage_completed: tuple[int, ...] = ()
    global_tokens: int = 0
    outer_step: int = 0
    lease_counter: int = 0
    queue_counter: int = 0

    @property
    def finished(self) -> bool:
        """True once every stage is done."""
        return self.stage_index >= len(self.plan.stages)

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
    )

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Actions the core returns with each new state: what happened, for the server to answer the RPC
and for storage to append to its ledgers (completions, credits, metrics history)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from coordinator.state import Lease, PeerMetrics, PeerState, Position, Split


class RejectCode(str, Enum):
    """Why an event was refused (the server maps each to a gRPC status code)."""

    UNKNOWN_PEER = "unknown_peer"
    PEER_GONE = "peer_gone"
    BANNED = "banned"
    UNKNOWN_LEASE = "unknown_lease"
    BAD_POSITION = "bad_position"
    BAD_VALUE = "bad_value"
    TOO_MANY_SESSIONS = "too_many_sessions"
    STEP_AHEAD = "step_ahead"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The event was refused and the state is unchanged; ``message`` says what to do."""

    code: RejectCode
    message: str


@dataclass(frozen=True, slots=True)
class PeerAdmitted:
    """A peer joined (``rejoined``: it resumed an earlier identity and keeps its credit and leases)."""

    peer_id: str
    rejoined: bool
    start_outer_step: int
    last_report_seq: int


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    """A lease for the peer; ``existing`` if the peer already held it (a retried request)."""

    lease: Lease
    existing: bool


@dataclass(frozen=True, slots=True)
class NoWork:
    """No shard for now; ``finished`` once the run is over."""

    reason: str
    retry_after_s: float
    finished: bool


@dataclass(frozen=True, slots=True)
class ReportAccepted:
    """A progress, complete or release report was applied (or was a ``duplicate`` and changed nothing)."""

    peer_id: str
    lease_id: str
    credited: int
    duplicate: bool
    peer_tokens: int


@dataclass(frozen=True, slots=True)
class Credited:
    """Ledger entry: ``tokens`` credited to ``peer_id`` by report ``seq`` on ``lease_id``."""

    peer_id: str
    lease_id: str
    stage: int
    shard_id: str
    seq: int
    tokens: int
    at: float


@dataclass(frozen=True, slots=True)
class ShardFinished:
    """A shard of a stage was completed (exactly once over the run)."""

    stage: int
    shard_id: str
    peer_id: str
    lease_id: str
    position: Position
    at: float


@dataclass(frozen=True, slots=True)
class LeaseReturned:
    """A lease ended without completion; ``requeued`` if the shard waits for a next holder at
    ``lease.position`` (False when its stage is already over)."""

    lease: Lease
    reason: str
    requeued: bool


@dataclass(frozen=True, slots=True)
class StageAdvanced:
    """The curriculum moved from stage ``old`` to ``new`` (``new == len(stages)``: run finished).
    ``growth_step``: the outer step after whose round every peer grows the model into stage ``new``'s
    shape (-1: the stage keeps the model)."""

    old: int
    new: int
    reason: str
    growth_step: int = -1


@dataclass(frozen=True, slots=True)
class PeerStateChanged:
    """A peer moved between states."""

    peer_id: str
    old: PeerState | None
    new: PeerState
    reason: str


@dataclass(frozen=True, slots=True)
class OuterStepAdvanced:
    """The run's outer step grew."""

    old: int
    new: int


@dataclass(frozen=True, slots=True)
class ParamsCompared:
    """The answer to an outer-step report: ``majority`` is the parameter hash most peers reported for
    ``outer_step`` (empty when there is none to compare with, or on a tie), ``resync`` whether this peer
    holds another one and must re-sync to it."""

    peer_id: str
    outer_step: int
    majority: str
    resync: bool


@dataclass(frozen=True, slots=True)
class SplitFound:
    """Outer step ``split.step`` was found split (once per step; later reports update ``splits.latest``)."""

    split: Split


@dataclass(frozen=True, slots=True)
class MetricsRecorded:
    """A metrics report to append to the history (chart of loss and val bpb)."""

    peer_id: str
    metrics: PeerMetrics
    global_tokens: int


@dataclass(frozen=True, slots=True)
class CredentialGranted:
    """The peer may get a credential for ``libp2p_id`` (the server signs it)."""

    peer_id: str
    libp2p_id: str


@dataclass(frozen=True, slots=True)
class StrikeRecorded:
    """Ledger entry: ``reporter`` reported ``accused`` (libp2p id ``libp2p_id``) in round ``round_index``.

    ``accused`` is empty when no admitted peer holds that libp2p id (the evidence is then ignored and
    not written to the ledger). ``witnesses`` counts the distinct join tokens of the accused's reporters
    in that round so far whose evidence counts (see ``coordinator.core``); ``struck`` is True when this report completed a strike; ``strikes`` and ``banned`` describe the
    accused after it.
    """

    reporter: str
    accused: str
    libp2p_id: str
    round_index: int
    part: int
    reason: str
    norm_ratio: float | None
    witnesses: int
    struck: bool
    strikes: int
    banned: bool
    at: float


@dataclass(frozen=True, slots=True)
class StrikeWithdrawn:
    """The strike against ``accused`` for ``round_index`` was taken back: ``by`` (the accused, or one of
    its reporters) named its group of that round without enough of the witnesses."""

    accused: str
    round_index: int
    by: str


@dataclass(frozen=True, slots=True)
class ClaimJudged:
    """A forwarded state record of ``libp2p_id`` (held by peer ``accused``; empty when no admitted peer
    holds that id) announcing ``claimed_step`` while the run was at ``run_step``: ``banned`` says whether
    its writer's join token is banned now; ``detail`` says why or why not."""

    accused: str
    libp2p_id: str
    claimed_step: int
    run_step: int
    banned: bool
    detail: str


Action = (
    Rejected
    | PeerAdmitted
    | LeaseGranted
    | NoWork
    | ReportAccepted
    | Credited
    | ShardFinished
    | LeaseReturned
    | StageAdvanced
    | PeerStateChanged
    | OuterStepAdvanced
    | ParamsCompared
    | SplitFound
    | MetricsRecorded
    | CredentialGranted
    | StrikeRecorded
    | StrikeWithdrawn
    | ClaimJudged
)

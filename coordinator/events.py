# SPDX-License-Identifier: AGPL-3.0-or-later
"""Events the coordinator core reacts to. Each is a plain frozen value; the server builds them from
validated requests (peer ids, lease ids, positions), the clock builds ``Tick``.

Report events (progress, complete, release) carry the peer's report sequence number ``seq`` (>= 1,
strictly increasing per peer): a report whose ``seq`` is not above the last accepted one is a
duplicate and changes nothing, so a retried RPC never counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.state import Hardware, Position


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """A peer presented a valid join token (new ``peer_id``) or resumed an earlier session (known one);
    ``token_id`` names that join token (empty: none recorded, tests of the core only)."""

    peer_id: str
    name: str
    hardware: Hardware = field(default_factory=Hardware)
    client_version: str = ""
    metrics_address: str = ""
    token_id: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The peer is alive; ``phase`` is free text for the status page."""

    peer_id: str
    phase: str = ""


@dataclass(frozen=True, slots=True)
class LeaseRequested:
    """The peer asks for a shard (gets its current one back if it already holds the maximum)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class ProgressReported:
    """The peer reached ``position`` (absolute) in the shard of ``lease_id``."""

    peer_id: str
    lease_id: str
    seq: int
    position: Position


@dataclass(frozen=True, slots=True)
class ShardCompleted:
    """The peer consumed the whole shard of ``lease_id``; ``position`` is the final one."""

    peer_id: str
    lease_id: str
    seq: int
    position: Position


@dataclass(frozen=True, slots=True)
class ShardReleased:
    """The peer gives the shard back; the next holder resumes at ``position``."""

    peer_id: str
    lease_id: str
    seq: int
    position: Position


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """The peer left cleanly."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: expire leases and peers whose deadlines are behind ``now``."""


@dataclass(frozen=True, slots=True)
class Restarted:
    """The coordinator restarted: every live peer and lease gets a fresh deadline from ``now``, so the
    coordinator's own downtime never expires anyone."""


@dataclass(frozen=True, slots=True)
class MetricsReported:
    """Training metrics from a peer (validated by the server: finite, non-negative; ``reachability`` one
    of ``coordinator.validation.REACHABILITIES`` or empty)."""

    peer_id: str
    outer_step: int
    loss: float
    val_bpb: float | None
    tokens_per_s: float
    tokens_processed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    uplink_bytes_per_s: float = 0.0
    downlink_bytes_per_s: float = 0.0
    reachability: str = ""


@dataclass(frozen=True, slots=True)
class OuterStepReported:
    """The peer finished outer step ``outer_step``, holding parameters whose sha256 is ``params_sha256``
    (64 hex digits; empty from older peers) after a round of ``group_size`` peers (0: not said), whose
    members had the libp2p ids ``group`` (empty: not said; older peers)."""

    peer_id: str
    outer_step: int
    params_sha256: str = ""
    group_size: int = 0
    group: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PeerStruck:
    """The trust policy rejected a contribution of the peer; enough strikes ban it."""

    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CredentialIssued:
    """The peer asks for an averaging credential for libp2p identity ``libp2p_id`` (already checked to
    be the id of the key it presented)."""

    peer_id: str
    libp2p_id: str


@dataclass(frozen=True, slots=True)
class StrikeEvidence:
    """One rejected contribution: whose (libp2p id), why, its norm ratio, in which part."""

    libp2p_id: str
    reason: str
    norm_ratio: float | None = None
    part: int = 0


@dataclass(frozen=True, slots=True)
class StrikeReported:
    """Peer ``reporter_id`` rejected these contributions to its part of round ``round_index``."""

    reporter_id: str
    round_index: int
    evidence: tuple[StrikeEvidence, ...]


@dataclass(frozen=True, slots=True)
class ClaimReported:
    """Peer ``reporter_id`` forwarded a state record, signed by its writer ``libp2p_id``, announcing
    ``claimed_step`` (the server checked the signature; ``lila_net.dht.evidence``)."""

    reporter_id: str
    libp2p_id: str
    claimed_step: int


@dataclass(frozen=True, slots=True)
class PeerBanned:
    """Ban the peer now (its leases go back to the queue; its credit stays on the record)."""

    peer_id: str
    reason: str


Event = (
    PeerJoined
    | Heartbeat
    | LeaseRequested
    | ProgressReported
    | ShardCompleted
    | ShardReleased
    | PeerLeft
    | Tick
    | Restarted
    | MetricsReported
    | OuterStepReported
    | PeerStruck
    | PeerBanned
    | CredentialIssued
    | StrikeReported
    | ClaimReported
)

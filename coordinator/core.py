# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's scheduling logic as a pure state machine: ``apply(state, event, now)``.

No I/O, no clock, no randomness: the same state, event and ``now`` always give the same result, so
the server, the storage layer and the property tests all drive this one function.

Rules, in short:

* Work units are (stage, shard) keys. A peer asks for a lease and gets, in order of preference, a
  shard of the current stage that was handed back (it resumes at the position where the last
  holder stopped) or the next never-leased shard of the stage. When every shard of the stage is
  leased, the peer is told to retry later; the stage ends when all its shards are completed or its
  token budget is reached, and then the next stage starts. Shards of an ended stage that come back
  are not handed out again (their remaining documents are skipped).
* Credit: a report (progress, complete, release) carries an absolute position and a per-peer
  sequence number. Only the tokens beyond the lease's last reported position are credited, and a
  report whose sequence number is not above the peer's last accepted one is a duplicate: nothing
  counts twice. A completion needs the final position to cover every document of the shard. A
  position may claim at most ``max_tokens_per_doc`` tokens per document up to the one it is in (the
  plan knows documents, not tokens), and no counter may pass ``MAX_LEDGER_INT`` (SQLite's INTEGER).
* Liveness: any call of a peer renews it. After ``lease_timeout_s`` without a call the peer is
  ``lost`` and its leases return to the queue at their last reported positions (on ``Tick``).
* Join tokens: a peer is recorded with the join token it joined with. A token holds at most
  ``max_sessions_per_token`` live (joining or active) sessions, and a ban is the token's: its other
  sessions are banned with the peer and the token cannot join again. Quorums and strike witnesses
  count distinct join tokens, so sessions of one token count once.
* Outer step: each peer reports the outer steps it finishes, never more than one step beyond the
  run's (a peer further ahead must download the run's state first). The run's step advances one step
  at a time, once distinct join tokens of live peers that reached the next step are at least
  ``outer_step_quorum``, and at least two while two or more tokens take part (not idle, or at the run's
  step); re-checked when silent peers are marked lost. A peer that went on while the step could not
  move (the others froze before they were marked lost) catches up by reporting each step in turn
  (:func:`peer.after_round.report_outer_step`), which succeeds once it is the only one taking part;
  it never goes down. The report's parameter hash and group size feed split detection
  (:mod:`coordinator.splits`), which answers whether the peer must re-sync to the majority's
  parameters; its group (the libp2p ids it averaged with) is kept for the strike rule below.
* Trust: a peer gets averaging credentials for at most ``MAX_IDENTITIES_PER_PEER`` libp2p identities
  (one per process start). Part owners report the contributions they rejected; a round counts as a
  strike against a peer once reporters of ``strike_witnesses`` distinct join tokens (not the
  accused's) witnessed it for that round, and ``strikes_to_ban`` strikes ban it (its leases go back,
  every later call is refused, and its libp2p ids are published for the other peers to refuse).
  Reports must be about rounds within ``STRIKE_WINDOW_ROUNDS`` of the run's outer step; older
  tallies are dropped.
* Strike evidence is tied to the round's group: a report counts only while neither side's own
  account of that round's group (``ReportOuterStep``'s ``group``) leaves the other out. An account
  that arrives after the reports (peers report strikes right after a round, their outer step a
  moment later) drops the witnesses it contradicts and takes back a strike that no longer has enough
  of them (``StrikeWithdrawn``; a ban already made stays). So peers cannot frame an honest peer they
  did not average with: it names its group after every applied round, and their strikes are taken
  back before they add up to a ban (unless ``strikes_to_ban`` is 1). Not covered: rounds the honest
  peer did not apply (it sends no account), an accused that never gives its account (the reports
  stand), and lies about a group both liars really were in (that needs signed group transcripts).
* Growth: when a stage begins whose model shape is larger than its predecessor's
  (:meth:`coordinator.plan.RunPlan.grows_at`), the growth is announced for outer step
  ``GROWTH_LEAD_STEPS`` after the highest step the run or any live peer reached (``growth_steps``, sent
  with every Join and Heartbeat answer): every peer grows right after the round that reaches that step, so
  the state of that step and of every later one has the new shape. The lead covers a peer one round ahead
  of what it reported; a peer that still misses it holds a smaller shape than the network's state of its
  step and re-syncs (downloading the grown state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar

from coordinator import actions as act
from coordinator import events as ev
from coordinator import splits
from coordinator.plan import ShardKey
from coordinator.state import (
    LIVE_STATES,
    CoordinatorState,
    HashReport,
    Lease,
    PeerMetrics,
    PeerRecord,
    PeerState,
    Position,
    QueuedShard,
    StrikeTally,
)
from lila_net import phases
from lila_net.claims import FALSE_CLAIM_MARGIN, is_false_claim

K = TypeVar("K")
V = TypeVar("V")

LEASE_ID_PREFIX = "L"
MAX_IDENTITIES_PER_PEER = 4
CORROBORATING_TOKENS = 2  # distinct join tokens a step needs while that many take part (one cannot move it)
STRIKE_WINDOW_ROUNDS = 16
GROWTH_LEAD_STEPS = 2  # a growth applies this many outer steps after the run's step when its stage begins
_SIBLING_BAN = "same join token as"
MAX_LEDGER_INT = 2**63 - 1  # SQLite INTEGER: no stored counter may pass it


class Transition(NamedTuple):
    """Result of :func:`apply`; unpacks as ``state, actions``."""

    state: CoordinatorState
    actions: list[act.Action]


class TrackedTransition(NamedTuple):
    """Result of :func:`apply_tracked`: also the keys written in each mapping field (``peers``,
    ``leases``, ``returned``), so storage writes only those rows instead of diffing whole mappings."""

    state: CoordinatorState
    actions: list[act.Action]
    dirty: dict[str, set[Any]]


class _Reject(Exception):
    """Raised inside a handler to refuse the event; :func:`apply` turns it into ``Rejected``."""

    def __init__(self, code: act.RejectCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _TrackedDict(dict):  # type: ignore[type-arg]
    """A dict that remembers which keys were set or deleted (only the methods the core uses)."""

    def __init__(self, data: Mapping[Any, Any], keys: set[Any]) -> None:
        super().__init__(data)
        self.keys_written = keys

    def __setitem__(self, key: Any, value: Any) -> None:
        self.keys_written.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.keys_written.add(key)
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self.keys_written.add(key)
        return super().pop(key, *default)


class _Tx:
    """Copy-on-write builder of the next state: mappings are copied on their first write only."""

    def __init__(self, state: CoordinatorState, now: float) -> None:
        self.base = state
        self.now = now
        self.changes: dict[str, Any] = {}
        self.actions: list[act.Action] = []
        self.dirty: dict[str, set[Any]] = {}

    def get(self, name: str) -> Any:
        return self.changes.get(name, getattr(self.base, name))

    def set(self, name: str, value: Any) -> None:
        self.changes[name] = value

    def writable(self, name: str) -> _TrackedDict:
        """A private dict copy of mapping field ``name`` (made once per transition) that records
        the keys written or deleted in ``self.dirty[name]``."""
        value = self.changes.get(name)
        if value is None:
            keys = self.dirty.setdefault(name, set())
            value = _TrackedDict(getattr(self.base, name), keys)
            self.changes[name] = value
        return value

    @property
    def peers(self) -> Mapping[str, PeerRecord]:
        return self.get("peers")

    @property
    def leases(self) -> Mapping[str, Lease]:
        return self.get("leases")

    def put_peer(self, peer: PeerRecord) -> None:
        self.writable("peers")[peer.peer_id] = peer

    def emit(self, action: act.Action) -> None:
        self.actions.append(action)

    def state(self) -> CoordinatorState:
        if not self.changes:
            return self.base
        return dataclasses.replace(self.base, **self.changes)


def apply(state: CoordinatorState, event: ev.Event, now: float) -> Transition:
    """Apply one event at time ``now`` (seconds, wall clock); returns the new state and its actions.

    A refused event returns the unchanged state and a single :class:`~coordinator.actions.Rejected`.
    """
    tracked = apply_tracked(state, event, now)
    return Transition(tracked.state, tracked.actions)


def apply_tracked(state: CoordinatorState, event: ev.Event, now: float) -> TrackedTransition:
    """:func:`apply`, also returning the keys each mapping field had written or deleted."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(
            f"apply() got {type(event).__name__}; expected one of the events in coordinator.events"
        )
    tx = _Tx(state, now)
    try:
        handler(tx, event)
    except _Reject as exc:
        return TrackedTransition(state, [act.Rejected(exc.code, exc.message)], {})
    return TrackedTransition(tx.state(), tx.actions, tx.dirty)


# --------------------------------------------------------------------------- helpers


def _live_peer(tx: _Tx, peer_id: str) -> PeerRecord:
    """The caller's record, renewed (a lost peer that calls again is active again)."""
    peer = tx.peers.get(peer_id)
    if peer is None:
        raise _Reject(act.RejectCode.UNKNOWN_PEER, f"peer {peer_id} is unknown to this run: call Join again")
    if peer.state is PeerState.BANNED:
        raise _Reject(
            act.RejectCode.BANNED, f"peer {peer_id} is banned ({peer.ban_reason}); it may not take part"
        )
    if peer.state is PeerState.LEFT:
        raise _Reject(act.RejectCode.PEER_GONE, f"peer {peer_id} left the run: call Join again to come back")
    updates: dict[str, Any] = {"last_seen": max(peer.last_seen, tx.now)}
    if peer.state is PeerState.LOST:
        updates["state"] = PeerState.ACTIVE
        tx.emit(
            act.PeerStateChanged(peer_id, PeerState.LOST, PeerState.ACTIVE, "called again after being lost")
        )
    peer = dataclasses.replace(peer, **updates)
    tx.put_peer(peer)
    return peer


def _held_lease(tx: _Tx, peer_id: str, lease_id: str) -> Lease:
    lease = tx.leases.get(lease_id)
    if lease is None or lease.peer_id != peer_id:
        raise _Reject(
            act.RejectCode.UNKNOWN_LEASE,
            f"lease {lease_id} is not held by peer {peer_id} (it expired, was completed or never existed): "
            "drop that shard and call LeaseShard",
        )
    return lease


def _replace_tuple(values: tuple[int, ...], index: int, value: int) -> tuple[int, ...]:
    return (*values[:index], value, *values[index + 1 :])


def _credit(tx: _Tx, peer: PeerRecord, lease: Lease, seq: int, position: Position) -> tuple[PeerRecord, int]:
    """Move ``lease`` to ``position`` and credit the new tokens; returns the updated peer and the credit."""
    spec = tx.base.plan.shard(lease.key)
    assert spec is not None, "a lease always points into the plan"
    if not position.covers(lease.position):
        raise _Reject(
            act.RejectCode.BAD_POSITION,
            f"position ({position.docs_consumed} docs, {position.tokens_consumed} tokens) is behind the last "
            f"reported ({lease.position.docs_consumed} docs, {lease.position.tokens_consumed} tokens) of lease "
            f"{lease.lease_id}: report absolute positions that never go back",
        )
    if position.docs_consumed > spec.num_docs:
        raise _Reject(
            act.RejectCode.BAD_POSITION,
            f"position.docs_consumed={position.docs_consumed} exceeds the {spec.num_docs} documents of shard "
            f"{lease.shard_id}",
        )
    bound = min(position.docs_consumed + 1, spec.num_docs) * tx.base.config.max_tokens_per_doc
    if position.tokens_consumed > bound:
        raise _Reject(
            act.RejectCode.BAD_POSITION,
            f"position.tokens_consumed={position.tokens_consumed} exceeds {bound} tokens, the most "
            f"{min(position.docs_consumed + 1, spec.num_docs)} documents of shard {lease.shard_id} can hold "
            f"(coordinator.max_tokens_per_doc={tx.base.config.max_tokens_per_doc}): report the tokens really "
            "consumed",
        )
    credited = position.tokens_consumed - lease.position.tokens_consumed
    if max(peer.tokens, tx.get("global_tokens")) + credited > MAX_LEDGER_INT:
        raise _Reject(
            act.RejectCode.BAD_POSITION,
            f"crediting {credited} tokens would overflow the ledger's 64-bit counters: report real positions",
        )
    peer = dataclasses.replace(peer, tokens=peer.tokens + credited, last_report_seq=seq)
    tx.put_peer(peer)
    if credited:
        tx.set("global_tokens", tx.get("global_tokens") + credited)
        stage_tokens = tx.get("stage_tokens")
        tx.set(
            "stage_tokens", _replace_tuple(stage_tokens, lease.stage, stage_tokens[lease.stage] + credited)
        )
        tx.emit(
            act.Credited(peer.peer_id, lease.lease_id, lease.stage, lease.shard_id, seq, credited, tx.now)
        )
    return peer, credited


def _return_lease(tx: _Tx, lease: Lease, reason: str) -> None:
    """End a lease without completing it; requeue the shard if its stage is still running."""
    leases = tx.writable("leases")
    del leases[lease.lease_id]
    requeue = lease.stage >= tx.get("stage_index")
    if requeue:
        counter = tx.get("queue_counter")
        tx.writable("returned")[lease.key] = QueuedShard(lease.position, counter)
        tx.set("queue_counter", counter + 1)
    tx.emit(act.LeaseReturned(lease, reason, requeue))


def _finish_shard(tx: _Tx, lease: Lease, position: Position) -> None:
    del tx.writable("leases")[lease.lease_id]
    completed = tx.get("stage_completed")
    tx.set("stage_completed", _replace_tuple(completed, lease.stage, completed[lease.stage] + 1))
    tx.emit(act.ShardFinished(lease.stage, lease.shard_id, lease.peer_id, lease.lease_id, position, tx.now))


def _stage_drained(tx: _Tx, stage: int) -> bool:
    """True if stage ``stage`` has no shard left to hand out and none in flight."""
    if tx.get("cursors")[stage] < len(tx.base.plan.stages[stage].shards):
        return False
    if any(key[0] == stage for key in tx.get("returned")):
        return False
    return not any(lease.stage == stage for lease in tx.leases.values())


def _advance_stages(tx: _Tx) -> None:
    """Move past every stage that reached its budget or ran out of shards."""
    stages = tx.base.plan.stages
    while tx.get("stage_index") < len(stages):
        index = tx.get("stage_index")
        budget = stages[index].token_budget
        if budget is not None and tx.get("stage_tokens")[index] >= budget:
            reason = f"stage {stages[index].name!r} reached its budget of {budget} tokens"
        elif _stage_drained(tx, index):
            reason = f"every shard of stage {stages[index].name!r} is completed"
        else:
            return
        tx.set("stage_index", index + 1)
        stale = [key for key in tx.get("returned") if key[0] <= index]
        if stale:
            returned = tx.writable("returned")
            for key in stale:
                del returned[key]
        growth_step = -1
        if tx.base.plan.grows_at(index + 1):
            reported = [p.outer_step for p in tx.peers.values() if p.state in LIVE_STATES]
            growth_step = max([tx.get("outer_step"), *reported]) + GROWTH_LEAD_STEPS
            steps = tx.get("growth_steps") or (-1,) * len(stages)
            tx.set("growth_steps", _replace_tuple(steps, index + 1, growth_step))
        tx.emit(act.StageAdvanced(index, index + 1, reason, growth_step))


def _check_seq(tx: _Tx, peer: PeerRecord, lease_id: str, seq: int) -> bool:
    """True if the report is new; emits the duplicate acknowledgement otherwise."""
    if seq < 1:
        raise _Reject(act.RejectCode.BAD_VALUE, f"report_seq={seq}: sequence numbers start at 1")
    if seq <= peer.last_report_seq:
        tx.emit(act.ReportAccepted(peer.peer_id, lease_id, 0, True, peer.tokens))
        return False
    return True


def _end_peer_leases(tx: _Tx, peer_id: str, reason: str) -> None:
    for lease in [lease for lease in tx.leases.values() if lease.peer_id == peer_id]:
        _return_lease(tx, lease, reason)


def _set_state(tx: _Tx, peer: PeerRecord, new: PeerState, reason: str, **extra: Any) -> PeerRecord:
    updated = dataclasses.replace(peer, state=new, **extra)
    tx.put_peer(updated)
    if new is not peer.state:
        tx.emit(act.PeerStateChanged(peer.peer_id, peer.state, new, reason))
    return updated


# --------------------------------------------------------------------------- handlers


def _on_joined(tx: _Tx, event: ev.PeerJoined) -> None:
    old = tx.peers.get(event.peer_id)
    if old is not None and old.state is PeerState.BANNED:
        raise _Reject(
            act.RejectCode.BANNED, f"peer {event.peer_id} is banned ({old.ban_reason}); it may not rejoin"
        )
    token = event.token_id or event.peer_id
    if old is not None and old.token_id and old.token_key != token:
        raise _Reject(
            act.RejectCode.BAD_VALUE,
            f"peer {event.peer_id} joined with another join token: resume it with its own token, or leave "
            "previous_session_token empty to join as a new peer",
        )
    siblings = [p for p in tx.peers.values() if p.token_key == token and p.peer_id != event.peer_id]
    banned = min(  # the peer banned first names the reason; its siblings' reasons only point to it
        (p for p in siblings if p.state is PeerState.BANNED),
        key=lambda p: (p.ban_reason.startswith(_SIBLING_BAN), p.peer_id),
        default=None,
    )
    if banned is not None:
        raise _Reject(
            act.RejectCode.BANNED,
            f"join token {token} is banned (peer {banned.peer_id}: {banned.ban_reason}); it may not join again",
        )
    live = sorted(p.peer_id for p in siblings if p.state in LIVE_STATES)
    limit = tx.base.config.max_sessions_per_token
    if len(live) >= limit:
        raise _Reject(
            act.RejectCode.TOO_MANY_SESSIONS,
            f"join token {token} already has {_plural(len(live), 'live session')} ({', '.join(live)}), the "
            f"most coordinator.max_sessions_per_token={limit} allows: resume a peer with its "
            "previous_session_token, stop it (Leave) or wait until it times out; each machine needs its own "
            "join token",
        )
    outer = tx.get("outer_step")
    if old is None:
        peer = PeerRecord(
            peer_id=event.peer_id,
            name=event.name,
            hardware=event.hardware,
            client_version=event.client_version,
            metrics_address=event.metrics_address,
            state=PeerState.JOINING,
            joined_at=tx.now,
            last_seen=tx.now,
            start_outer_step=outer,
            token_id=event.token_id,
        )
        tx.put_peer(peer)
        tx.emit(act.PeerStateChanged(peer.peer_id, None, PeerState.JOINING, "joined"))
    else:
        peer = _set_state(
            tx,
            old,
            PeerState.JOINING,
            "rejoined",
            name=event.name,
            hardware=event.hardware,
            client_version=event.client_version,
            metrics_address=event.metrics_address,
            last_seen=max(old.last_seen, tx.now),
            start_outer_step=outer,
            token_id=old.token_id or event.token_id,
        )
    tx.emit(act.PeerAdmitted(peer.peer_id, old is not None, outer, peer.last_report_seq))


def _on_heartbeat(tx: _Tx, event: ev.Heartbeat) -> None:
    peer = _live_peer(tx, event.peer_id)
    if event.phase != peer.phase:
        tx.put_peer(dataclasses.replace(peer, phase=event.phase))


def _on_lease_requested(tx: _Tx, event: ev.LeaseRequested) -> None:
    peer = _live_peer(tx, event.peer_id)
    if peer.state is PeerState.JOINING:
        peer = _set_state(tx, peer, PeerState.ACTIVE, "asked for data")
    held = [lease for lease in tx.leases.values() if lease.peer_id == peer.peer_id]
    if len(held) >= tx.base.config.max_leases_per_peer:
        tx.emit(act.LeaseGranted(held[0], existing=True))
        return
    stages = tx.base.plan.stages
    stage = tx.get("stage_index")
    if stage >= len(stages):
        tx.emit(
            act.NoWork(
                "the run is finished: every curriculum stage is done", tx.base.config.retry_after_s, True
            )
        )
        return
    position = Position()
    queued = next((key for key in tx.get("returned") if key[0] == stage), None)
    if queued is not None:
        key: ShardKey = queued
        position = tx.writable("returned").pop(key).position
    else:
        cursor = tx.get("cursors")[stage]
        if cursor >= len(stages[stage].shards):
            in_flight = sum(1 for lease in tx.leases.values() if lease.stage == stage)
            tx.emit(
                act.NoWork(
                    f"every shard of stage {stages[stage].name!r} is leased; waiting for {in_flight} to finish",
                    tx.base.config.retry_after_s,
                    False,
                )
            )
            return
        key = (stage, stages[stage].shards[cursor].shard_id)
        tx.set("cursors", _replace_tuple(tx.get("cursors"), stage, cursor + 1))
    number = tx.get("lease_counter") + 1
    tx.set("lease_counter", number)
    lease = Lease(
        lease_id=f"{LEASE_ID_PREFIX}{number}",
        stage=key[0],
        shard_id=key[1],
        peer_id=peer.peer_id,
        start=position,
        position=position,
        granted_at=tx.now,
        renewed_at=tx.now,
    )
    tx.writable("leases")[lease.lease_id] = lease
    tx.emit(act.LeaseGranted(lease, existing=False))


def _on_progress(tx: _Tx, event: ev.ProgressReported) -> None:
    peer = _live_peer(tx, event.peer_id)
    if not _check_seq(tx, peer, event.lease_id, event.seq):
        return
    lease = _held_lease(tx, peer.peer_id, event.lease_id)
    peer, credited = _credit(tx, peer, lease, event.seq, event.position)
    tx.writable("leases")[lease.lease_id] = dataclasses.replace(
        lease, position=event.position, renewed_at=tx.now
    )
    tx.emit(act.ReportAccepted(peer.peer_id, lease.lease_id, credited, False, peer.tokens))
    _advance_stages(tx)


def _on_completed(tx: _Tx, event: ev.ShardCompleted) -> None:
    peer = _live_peer(tx, event.peer_id)
    if not _check_seq(tx, peer, event.lease_id, event.seq):
        return
    lease = _held_lease(tx, peer.peer_id, event.lease_id)
    spec = tx.base.plan.shard(lease.key)
    assert spec is not None, "a lease always points into the plan"
    if event.position.docs_consumed != spec.num_docs:
        raise _Reject(
            act.RejectCode.BAD_POSITION,
            f"position.docs_consumed={event.position.docs_consumed} but shard {lease.shard_id} has "
            f"{spec.num_docs} documents: report progress (or release) until the shard is fully consumed",
        )
    peer, credited = _credit(tx, peer, lease, event.seq, event.position)
    _finish_shard(tx, lease, event.position)
    tx.emit(act.ReportAccepted(peer.peer_id, lease.lease_id, credited, False, peer.tokens))
    _advance_stages(tx)


def _on_released(tx: _Tx, event: ev.ShardReleased) -> None:
    peer = _live_peer(tx, event.peer_id)
    if not _check_seq(tx, peer, event.lease_id, event.seq):
        return
    lease = _held_lease(tx, peer.peer_id, event.lease_id)
    peer, credited = _credit(tx, peer, lease, event.seq, event.position)
    spec = tx.base.plan.shard(lease.key)
    assert spec is not None, "a lease always points into the plan"
    moved = dataclasses.replace(lease, position=event.position)
    if event.position.docs_consumed == spec.num_docs:
        _finish_shard(tx, moved, event.position)
    else:
        _return_lease(tx, moved, "released")
    tx.emit(act.ReportAccepted(peer.peer_id, lease.lease_id, credited, False, peer.tokens))
    _advance_stages(tx)


def _on_left(tx: _Tx, event: ev.PeerLeft) -> None:
    peer = _live_peer(tx, event.peer_id)
    _end_peer_leases(tx, peer.peer_id, "peer left")
    _set_state(tx, peer, PeerState.LEFT, "left")
    _advance_stages(tx)


def _expire(tx: _Tx) -> None:
    """Mark silent peers lost and return leases whose holder went silent or stalled."""
    config = tx.base.config
    now = tx.now
    for peer in list(tx.peers.values()):
        if peer.state in LIVE_STATES and now - peer.last_seen > config.lease_timeout_s:
            _set_state(tx, peer, PeerState.LOST, f"no call for over {config.lease_timeout_s:g} s")
    peers = tx.peers
    for lease in list(tx.leases.values()):
        holder = peers[lease.peer_id]
        if holder.state not in LIVE_STATES:
            _return_lease(tx, lease, f"holder is {holder.state.value}")
        elif now - lease.renewed_at > config.stall_timeout_s:
            _return_lease(tx, lease, f"no progress for over {config.stall_timeout_s:g} s")
    _advance_outer_step(tx)  # peers that went silent no longer hold the step back
    _advance_stages(tx)


def _on_tick(tx: _Tx, event: ev.Tick) -> None:
    _expire(tx)


def _on_restarted(tx: _Tx, event: ev.Restarted) -> None:
    for peer in list(tx.peers.values()):
        if peer.state in LIVE_STATES and peer.last_seen < tx.now:
            tx.put_peer(dataclasses.replace(peer, last_seen=tx.now))
    for lease in list(tx.leases.values()):
        if lease.renewed_at < tx.now:
            tx.writable("leases")[lease.lease_id] = dataclasses.replace(lease, renewed_at=tx.now)


def _on_metrics(tx: _Tx, event: ev.MetricsReported) -> None:
    peer = _live_peer(tx, event.peer_id)
    metrics = PeerMetrics(
        outer_step=event.outer_step,
        loss=event.loss,
        val_bpb=event.val_bpb,
        tokens_per_s=event.tokens_per_s,
        tokens_processed=event.tokens_processed,
        bytes_sent=event.bytes_sent,
        bytes_received=event.bytes_received,
        reported_at=tx.now,
        uplink_bytes_per_s=event.uplink_bytes_per_s,
        downlink_bytes_per_s=event.downlink_bytes_per_s,
        reachability=event.reachability,
    )
    tx.put_peer(dataclasses.replace(peer, metrics=metrics))
    tx.emit(act.MetricsRecorded(peer.peer_id, metrics, tx.get("global_tokens")))


def _quorum_reached(tx: _Tx, step: int) -> bool:
    """True if distinct join tokens of live (joining or active) peers that reached ``step`` are at least
    ``outer_step_quorum``, and at least ``CORROBORATING_TOKENS`` whenever that many live tokens take part
    (a live session that is not idle, or that reached the step before): one token alone cannot move a run
    that others train in, run ahead of peers that joined and have not finished a round yet, or of peers
    idle at the run's end. Not a majority: slow peers that miss rounds must not hold the fast ones back
    (they follow by downloading the step the coordinator vouches for)."""
    reached = {p.token_key for p in tx.peers.values() if p.state in LIVE_STATES and p.outer_step >= step}
    taking_part = _taking_part(tx, step - 1)
    return len(reached) >= max(tx.base.config.outer_step_quorum, min(CORROBORATING_TOKENS, len(taking_part)))


def _taking_part(tx: _Tx, step: int) -> set[str]:
    """Join tokens of live sessions that are not idle or that reached ``step``."""
    return {p.token_key for p in tx.peers.values()
            if p.state in LIVE_STATES and (p.phase != phases.IDLE or p.outer_step >= step)}


def _advance_outer_step(tx: _Tx) -> None:
    """Move the run's step up, one step at a time, while the next one has its quorum."""
    old = tx.get("outer_step")
    new = old
    while _quorum_reached(tx, new + 1):
        new += 1
    if new > old:
        tx.set("outer_step", new)
        tx.emit(act.OuterStepAdvanced(old, new))


def _on_outer_step(tx: _Tx, event: ev.OuterStepReported) -> None:
    if event.outer_step < 0:
        raise _Reject(act.RejectCode.BAD_VALUE, f"outer_step={event.outer_step} must be >= 0")
    old = tx.get("outer_step")
    if event.outer_step > old + 1:
        raise _Reject(
            act.RejectCode.STEP_AHEAD,
            f"outer_step={event.outer_step} is more than one step ahead of the run's outer step {old}: "
            f"download the run's state of step {old} first, then report each step you finish",
        )
    peer = _live_peer(tx, event.peer_id)
    if event.outer_step > peer.outer_step:
        peer = dataclasses.replace(peer, outer_step=event.outer_step)
        tx.put_peer(peer)
    _advance_outer_step(tx)
    if event.group:
        _record_group(tx, peer, event.outer_step, event.group)
    report = HashReport(event.params_sha256, event.group_size)
    watch, verdict = splits.record(
        tx.get("splits"), tx.peers, peer_id=peer.peer_id, step=event.outer_step, report=report, now=tx.now
    )
    if watch is not tx.get("splits"):
        tx.set("splits", watch)
    if verdict.found is not None:
        tx.emit(act.SplitFound(verdict.found))
    tx.emit(act.ParamsCompared(peer.peer_id, event.outer_step, verdict.majority, verdict.resync))


def _ban(tx: _Tx, peer: PeerRecord, reason: str) -> None:
    """Ban ``peer`` and every other session of its join token (the ban is the token's)."""
    for member in sorted(
        (p for p in tx.peers.values() if p.token_key == peer.token_key and p.state is not PeerState.BANNED),
        key=lambda p: p.peer_id != peer.peer_id,
    ):
        why = reason if member.peer_id == peer.peer_id else f"{_SIBLING_BAN} {peer.peer_id}: {reason}"
        _end_peer_leases(tx, member.peer_id, "peer banned")
        _set_state(tx, member, PeerState.BANNED, why, ban_reason=why)
    _advance_stages(tx)


def _known_peer(tx: _Tx, peer_id: str) -> PeerRecord:
    peer = tx.peers.get(peer_id)
    if peer is None:
        raise _Reject(act.RejectCode.UNKNOWN_PEER, f"peer {peer_id} is unknown to this run")
    return peer


def _on_struck(tx: _Tx, event: ev.PeerStruck) -> None:
    peer = _known_peer(tx, event.peer_id)
    if peer.state is PeerState.BANNED:
        return
    peer = dataclasses.replace(peer, strikes=peer.strikes + 1)
    tx.put_peer(peer)
    if peer.strikes >= tx.base.config.strikes_to_ban:
        _ban(tx, peer, f"{peer.strikes} strikes, last: {event.reason}")


def _on_banned(tx: _Tx, event: ev.PeerBanned) -> None:
    peer = _known_peer(tx, event.peer_id)
    if peer.state is not PeerState.BANNED:
        _ban(tx, peer, event.reason)


def _on_credential(tx: _Tx, event: ev.CredentialIssued) -> None:
    peer = _live_peer(tx, event.peer_id)
    for other in tx.peers.values():
        if other.peer_id != peer.peer_id and event.libp2p_id in other.libp2p_ids:
            raise _Reject(
                act.RejectCode.BAD_VALUE,
                f"libp2p identity {event.libp2p_id[:16]}... belongs to another peer: start with a fresh identity",
            )
    ids = (*(x for x in peer.libp2p_ids if x != event.libp2p_id), event.libp2p_id)[-MAX_IDENTITIES_PER_PEER:]
    if ids != peer.libp2p_ids:
        tx.put_peer(dataclasses.replace(peer, libp2p_ids=ids))
    tx.emit(act.CredentialGranted(peer.peer_id, event.libp2p_id))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _strike_record(
    tx: _Tx,
    reporter: str,
    round_index: int,
    item: ev.StrikeEvidence,
    accused: PeerRecord | None,
    witnesses: int,
    struck: bool,
) -> act.StrikeRecorded:
    return act.StrikeRecorded(
        reporter=reporter,
        accused="" if accused is None else accused.peer_id,
        libp2p_id=item.libp2p_id,
        round_index=round_index,
        part=item.part,
        reason=item.reason,
        norm_ratio=item.norm_ratio,
        witnesses=witnesses,
        struck=struck,
        strikes=0 if accused is None else accused.strikes,
        banned=accused is not None and accused.state is PeerState.BANNED,
        at=tx.now,
    )


def _tied(tx: _Tx, peer_id: str, round_index: int, other: PeerRecord) -> bool | None:
    """Whether ``peer_id`` said it averaged with ``other`` in ``round_index`` (None: it said nothing)."""
    group = tx.get("groups").get((peer_id, round_index))
    return None if group is None else not group.isdisjoint(other.libp2p_ids)


def _consistent(tx: _Tx, reporter_id: str, accused: PeerRecord, round_index: int) -> bool:
    """False if the reporter or the accused named its group of ``round_index`` without the other."""
    reporter = tx.peers.get(reporter_id)
    if reporter is None:
        return False
    says = (_tied(tx, reporter_id, round_index, accused), _tied(tx, accused.peer_id, round_index, reporter))
    return False not in says


def _witnesses(tx: _Tx, tally: StrikeTally) -> int:
    """Distinct join tokens among the tally's reporters."""
    peers = tx.peers
    return len({peers[r].token_key for r in tally.reporters if r in peers})


def _judge(tx: _Tx, key: tuple[str, int], reporter: str, item: ev.StrikeEvidence) -> act.StrikeRecorded:
    """Strike the accused of ``key`` once its witnesses span ``strike_witnesses`` join tokens; returns
    the record of ``reporter``'s evidence ``item``."""
    config = tx.base.config
    tally = tx.get("strike_reports")[key]
    accused = tx.peers[key[0]]
    witnesses = _witnesses(tx, tally)
    struck = not tally.counted and witnesses >= config.strike_witnesses and accused.state is not PeerState.BANNED
    if struck:
        tx.writable("strike_reports")[key] = dataclasses.replace(tally, counted=True)
        latest = sorted({*accused.strike_rounds, key[1]})
        rounds = tuple(r for r in latest if latest[-1] - r < config.strike_memory_rounds)[-config.strikes_to_ban :]
        accused = dataclasses.replace(accused, strikes=accused.strikes + 1, strike_rounds=rounds)
        tx.put_peer(accused)
        if len(rounds) >= config.strikes_to_ban:
            ratio = "" if item.norm_ratio is None else f", norm ratio {item.norm_ratio:.3g}"
            _ban(
                tx,
                accused,
                f"{_plural(len(rounds), 'strike')} in {'rounds' if len(rounds) > 1 else 'round'} "
                f"{', '.join(map(str, rounds))}: {item.reason}{ratio}",
            )
            accused = tx.peers[accused.peer_id]
    return _strike_record(tx, reporter, key[1], item, accused, witnesses, struck)


def _record_group(tx: _Tx, peer: PeerRecord, round_index: int, group: frozenset[str]) -> None:
    """Keep who ``peer`` says it averaged with in ``round_index``; drop the witnesses of that round it
    contradicts, and take back a strike (not a ban) that no longer has enough witnesses."""
    groups = tx.writable("groups")
    groups[(peer.peer_id, round_index)] = group
    floor = tx.get("outer_step") - STRIKE_WINDOW_ROUNDS
    for old in [k for k in groups if k[1] < floor]:
        del groups[old]
    for key, tally in sorted(tx.get("strike_reports").items()):
        if key[1] != round_index or (key[0] != peer.peer_id and peer.peer_id not in tally.reporters):
            continue
        accused = tx.peers[key[0]]
        kept = frozenset(r for r in tally.reporters if _consistent(tx, r, accused, round_index))
        if kept == tally.reporters:
            continue
        tally = dataclasses.replace(tally, reporters=kept)
        if tally.counted and accused.state is not PeerState.BANNED and _witnesses(tx, tally) < tx.base.config.strike_witnesses:
            tally = dataclasses.replace(tally, counted=False)
            rounds = tuple(r for r in accused.strike_rounds if r != round_index)
            tx.put_peer(dataclasses.replace(accused, strikes=accused.strikes - 1, strike_rounds=rounds))
            tx.emit(act.StrikeWithdrawn(accused.peer_id, round_index, peer.peer_id))
        tx.writable("strike_reports")[key] = tally


def _on_strike_reported(tx: _Tx, event: ev.StrikeReported) -> None:
    reporter = _live_peer(tx, event.reporter_id)
    outer = tx.get("outer_step")
    if abs(event.round_index - outer) > STRIKE_WINDOW_ROUNDS:
        raise _Reject(
            act.RejectCode.BAD_VALUE,
            f"round={event.round_index} is more than {STRIKE_WINDOW_ROUNDS} rounds away from the run's outer "
            f"step {outer}: report rejections right after the round",
        )
    owners = {lid: p.peer_id for p in tx.peers.values() for lid in p.libp2p_ids}
    for item in event.evidence:
        accused_id = owners.get(item.libp2p_id)
        if accused_id is None or tx.peers[accused_id].token_key == reporter.token_key:
            tx.emit(_strike_record(tx, reporter.peer_id, event.round_index, item, None, 0, False))
            continue
        accused = tx.peers[accused_id]
        key = (accused_id, event.round_index)
        reports = tx.writable("strike_reports")
        tally = reports.get(key) or StrikeTally(frozenset())
        if _consistent(tx, reporter.peer_id, accused, event.round_index):
            reports[key] = dataclasses.replace(tally, reporters=tally.reporters | {reporter.peer_id})
        else:  # either side named its group of that round without the other: no evidence
            reports[key] = tally
        tx.emit(_judge(tx, key, reporter.peer_id, item))
    stale = [key for key in tx.get("strike_reports") if key[1] < outer - STRIKE_WINDOW_ROUNDS]
    if stale:
        reports = tx.writable("strike_reports")
        for key in stale:
            del reports[key]


def _on_claim_reported(tx: _Tx, event: ev.ClaimReported) -> None:
    """A state record signed by its writer announces a step far beyond the run's: the writer's token is
    banned on one report (the record is its own proof, ``lila_net.dht.evidence``). Smaller claims are
    only ignored by the peers (an honest peer may be up to ``MAX_ANNOUNCE_AHEAD`` ahead)."""
    reporter = _live_peer(tx, event.reporter_id)
    run_step = tx.get("outer_step")
    owners = {lid: p.peer_id for p in tx.peers.values() for lid in p.libp2p_ids}
    accused_id = owners.get(event.libp2p_id, "")
    accused = tx.peers.get(accused_id)

    def judged(banned: bool, detail: str) -> act.ClaimJudged:
        return act.ClaimJudged(accused_id, event.libp2p_id, event.claimed_step, run_step, banned, detail)

    if accused is None:
        tx.emit(judged(False, "no admitted peer holds the record's libp2p id"))
    elif accused.state is PeerState.BANNED:
        tx.emit(judged(True, f"already banned ({accused.ban_reason})"))
    elif not is_false_claim(event.claimed_step, run_step):
        tx.emit(judged(False, f"step {event.claimed_step} is within {FALSE_CLAIM_MARGIN} of the run's step "
                              f"{run_step}: not a false claim"))
    elif accused.token_key == reporter.token_key:
        tx.emit(judged(False, "the record's writer shares the reporter's join token"))
    else:
        reason = (f"announced outer step {event.claimed_step} while the run was at {run_step} "
                  f"(a state record it signed, forwarded by {reporter.peer_id})")
        _ban(tx, accused, reason)
        tx.emit(judged(True, reason))


_HANDLERS: dict[type, Any] = {
    ev.PeerJoined: _on_joined,
    ev.Heartbeat: _on_heartbeat,
    ev.LeaseRequested: _on_lease_requested,
    ev.ProgressReported: _on_progress,
    ev.ShardCompleted: _on_completed,
    ev.ShardReleased: _on_released,
    ev.PeerLeft: _on_left,
    ev.Tick: _on_tick,
    ev.Restarted: _on_restarted,
    ev.MetricsReported: _on_metrics,
    ev.OuterStepReported: _on_outer_step,
    ev.PeerStruck: _on_struck,
    ev.PeerBanned: _on_banned,
    ev.CredentialIssued: _on_credential,
    ev.ClaimReported: _on_claim_reported,
    ev.StrikeReported: _on_strike_reported,
}

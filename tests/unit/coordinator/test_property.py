# SPDX-License-Identifier: AGPL-3.0-or-later
"""Property test of the core + SQLite storage under arbitrary interleavings of peer behaviour,
crashes and coordinator restarts.

A small simulator plays the peers (each knows only what the coordinator told it) and checks after
every event: no shard key is leased twice or both leased and queued; every credited token sits in
exactly one shard position (credit conservation, so nothing counts twice); after a tick no lease is
held by a gone or silent peer. After the random phase a fresh peer drains the run; then every
document of the plan is completed exactly once and the ledgers agree with the state.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import actions as act
from coordinator import core
from coordinator import events as ev
from coordinator.plan import synthetic_plan
from coordinator.state import LIVE_STATES, Position
from coordinator.storage import VOLATILE_PEER_FIELDS, Storage
from tests.helpers.coordinator_service import core_config

TIMEOUT = 10.0
N_PEERS = 3
DRAIN_LIMIT = 200
PLAN = synthetic_plan([[3, 1, 2], [2, 4]])


@dataclass
class SimPeer:
    """What one peer process knows."""

    peer_id: str | None = None
    seq: int = 0
    lease_id: str | None = None
    position: Position = field(default_factory=Position)
    docs: int = 0
    last_report: tuple | None = None


def _durable(state):
    """The state without the peers' volatile fields (heartbeat times are not stored)."""
    peers = {k: dataclasses.replace(p, **dict.fromkeys(VOLATILE_PEER_FIELDS)) for k, p in state.peers.items()}
    return dataclasses.replace(state, peers=peers)


class Harness:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.storage = Storage(db_path)
        self.state = self.storage.load(PLAN, core_config(lease_timeout_s=TIMEOUT))
        self.now = 0.0
        self.peers = [SimPeer() for _ in range(N_PEERS)]
        self.next_peer = 0
        self.completed: list[tuple[int, str]] = []
        self.credited: dict[str, int] = {}
        self.credit_keys: set[tuple[str, int]] = set()
        self.skipped_tokens = 0

    def apply(self, event) -> list:
        old = self.state
        # The server's path: only the keys the core wrote are written (checked by every restart).
        self.state, actions, dirty = core.apply_tracked(old, event, self.now)
        self.storage.commit(old, self.state, actions, dirty=dirty)
        for a in actions:
            if isinstance(a, act.ShardFinished):
                assert (a.stage, a.shard_id) not in self.completed, f"completed twice: {a}"
                self.completed.append((a.stage, a.shard_id))
            elif isinstance(a, act.Credited):
                assert (a.peer_id, a.seq) not in self.credit_keys, f"credited twice: {a}"
                self.credit_keys.add((a.peer_id, a.seq))
                self.credited[a.peer_id] = self.credited.get(a.peer_id, 0) + a.tokens
            elif isinstance(a, act.LeaseReturned) and not a.requeued:
                self.skipped_tokens += a.lease.position.tokens_consumed
        self.check_invariants(isinstance(event, ev.Tick))
        return actions

    def check_invariants(self, after_tick: bool) -> None:
        s = self.state
        keys = [lease.key for lease in s.leases.values()]
        assert len(keys) == len(set(keys)), "a shard is leased twice"
        assert not set(keys) & set(s.returned), "a shard is both leased and queued"
        assert not set(keys) & set(self.completed), "a completed shard is leased"
        in_positions = sum(lease.position.tokens_consumed for lease in s.leases.values())
        in_positions += sum(q.position.tokens_consumed for q in s.returned.values())
        # Tokens of completed shards are their final positions: recover them from the credits.
        assert s.global_tokens == sum(self.credited.values())
        assert s.global_tokens >= in_positions
        for peer_id, peer in s.peers.items():
            assert peer.tokens == self.credited.get(peer_id, 0)
        if after_tick:
            for lease in s.leases.values():
                holder = s.peers[lease.peer_id]
                assert holder.state in LIVE_STATES, f"lease {lease.lease_id} held by a {holder.state} peer"
                assert self.now - holder.last_seen <= TIMEOUT
            for peer in s.peers.values():
                if peer.state in LIVE_STATES:
                    assert self.now - peer.last_seen <= TIMEOUT

    # ----------------------------------------------------------- peer behaviour

    def join(self, i: int, reuse: bool) -> None:
        sim = self.peers[i]
        if sim.peer_id is None or not reuse:
            self.next_peer += 1
            sim.peer_id = f"peer{self.next_peer}"
        actions = self.apply(ev.PeerJoined(sim.peer_id, f"name{i}"))
        admitted = [a for a in actions if isinstance(a, act.PeerAdmitted)]
        if admitted:
            sim.seq = admitted[0].last_report_seq
            sim.lease_id = None

    def lease(self, i: int) -> None:
        sim = self.peers[i]
        if sim.peer_id is None:
            return
        for a in self.apply(ev.LeaseRequested(sim.peer_id)):
            if isinstance(a, act.LeaseGranted):
                sim.lease_id = a.lease.lease_id
                sim.position = a.lease.position
                sim.docs = PLAN.shard(a.lease.key).num_docs

    def report(self, i: int, kind: str, docs_step: int, tokens_step: int, retry: bool = False) -> None:
        """Report on the held lease; ``retry`` sends the same report again, as after a lost reply."""
        sim = self.peers[i]
        if sim.peer_id is None or sim.lease_id is None:
            return
        if kind == "complete":
            position = Position(sim.docs, sim.position.tokens_consumed + tokens_step)
        else:
            position = Position(
                min(sim.docs, sim.position.docs_consumed + docs_step),
                sim.position.tokens_consumed + tokens_step,
            )
        sim.seq += 1
        event_type = {
            "progress": ev.ProgressReported,
            "complete": ev.ShardCompleted,
            "release": ev.ShardReleased,
        }[kind]
        event = event_type(sim.peer_id, sim.lease_id, sim.seq, position)
        actions = self.apply(event)
        rejected = [a for a in actions if isinstance(a, act.Rejected)]
        if rejected:
            assert rejected[0].code in (act.RejectCode.UNKNOWN_LEASE, act.RejectCode.PEER_GONE), rejected
            sim.seq -= 1
            sim.lease_id = None
            return
        sim.last_report = event
        sim.position = position
        if kind != "progress":
            sim.lease_id = None
        if retry:
            self.duplicate(i)

    def duplicate(self, i: int) -> None:
        sim = self.peers[i]
        if sim.last_report is None or sim.peer_id != sim.last_report.peer_id:
            return
        before = self.state.global_tokens
        actions = self.apply(sim.last_report)
        assert self.state.global_tokens == before
        if self.state.peers[sim.peer_id].state.value == "left":
            assert [a.code for a in actions if isinstance(a, act.Rejected)] == [act.RejectCode.PEER_GONE]
        else:
            accepted = [a for a in actions if isinstance(a, act.ReportAccepted)]
            assert len(accepted) == 1 and accepted[0].duplicate and accepted[0].credited == 0, actions

    def heartbeat(self, i: int) -> None:
        if self.peers[i].peer_id is not None:
            self.apply(ev.Heartbeat(self.peers[i].peer_id))

    def leave(self, i: int) -> None:
        sim = self.peers[i]
        if sim.peer_id is not None:
            self.apply(ev.PeerLeft(sim.peer_id))
            sim.lease_id = None

    def crash(self, i: int) -> None:
        """The peer process dies: it forgets everything except (maybe) its identity on disk."""
        sim = self.peers[i]
        sim.lease_id = None
        sim.last_report = None

    def wait(self, dt: float) -> None:
        self.now += dt
        self.apply(ev.Tick())

    def restart(self) -> None:
        before = self.state
        self.storage.close()
        self.storage = Storage(self.db_path)
        self.state = self.storage.load(PLAN, before.config)
        assert _durable(self.state) == _durable(before), "restart lost or changed state"
        assert list(self.state.returned) == list(before.returned), "restart changed the queue order"
        self.apply(ev.Restarted())

    def drain(self) -> None:
        """A fresh, reliable peer finishes the run after everyone else went silent."""
        self.now += TIMEOUT * 2
        self.apply(ev.Tick())
        self.peers.append(SimPeer())
        i = len(self.peers) - 1
        self.join(i, reuse=False)
        for _ in range(DRAIN_LIMIT):
            if self.state.finished:
                return
            self.lease(i)
            assert self.peers[i].lease_id is not None, "drain peer got no shard before the run finished"
            self.report(i, "complete", 0, 1, True)
        raise AssertionError("drain did not finish the run")


OPS = st.one_of(
    st.tuples(st.just("join"), st.integers(0, N_PEERS - 1), st.booleans()),
    st.tuples(st.just("lease"), st.integers(0, N_PEERS - 1)),
    st.tuples(
        st.just("report"),
        st.integers(0, N_PEERS - 1),
        st.sampled_from(["progress", "progress", "complete", "release"]),
        st.integers(0, 3),
        st.integers(0, 50),
        st.booleans(),
    ),
    st.tuples(st.just("duplicate"), st.integers(0, N_PEERS - 1)),
    st.tuples(st.just("heartbeat"), st.integers(0, N_PEERS - 1)),
    st.tuples(st.just("leave"), st.integers(0, N_PEERS - 1)),
    st.tuples(st.just("crash"), st.integers(0, N_PEERS - 1)),
    st.tuples(st.just("wait"), st.floats(0.0, 2.5 * TIMEOUT)),
    st.tuples(st.just("restart")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=60))
def test_any_interleaving_completes_everything_once_and_credits_once(ops):
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "ledger.db")
        try:
            for i in range(N_PEERS):
                h.join(i, reuse=False)
            for op, *args in ops:
                getattr(h, op)(*args)
            h.drain()
            planned = sorted(
                (s, shard.shard_id) for s, stage in enumerate(PLAN.stages) for shard in stage.shards
            )
            assert sorted(h.completed) == planned
            # The durable ledgers say the same as the state after one more restart.
            h.restart()
            rows = h.storage.completed_shards()
            assert sorted((stage, shard_id) for stage, shard_id, _ in rows) == planned
            totals = h.storage.credit_totals()
            assert {p: t for p, t in totals.items() if t} == {p: t for p, t in h.credited.items() if t}
            assert sum(totals.values()) == h.state.global_tokens
            assert sum(h.state.stage_tokens) == h.state.global_tokens
            assert h.state.stage_completed == tuple(len(stage.shards) for stage in PLAN.stages)
        finally:
            h.storage.close()

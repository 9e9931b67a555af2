# SPDX-License-Identifier: AGPL-3.0-or-later
"""Unit tests of the pure coordinator core: exact outcomes of single events."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator import actions as act
from coordinator import core
from coordinator import events as ev
from coordinator.plan import synthetic_plan
from coordinator.state import PeerState, Position, initial_state
from tests.helpers.coordinator_service import core_config

TIMEOUT = 10.0


def _state(docs=((4, 4, 4),), budgets=None, **config):
    """A fresh state; one lease per peer unless a test asks for more."""
    plan = synthetic_plan([list(d) for d in docs], budgets)
    return initial_state(plan, core_config(**{"lease_timeout_s": TIMEOUT, "max_leases_per_peer": 1, **config}))


def _leased(state=None):
    """``state`` (default: a fresh one) after p1 ("a") joined and was granted lease L1 at time 0."""
    joined = [(ev.PeerJoined("p1", "a"), 0.0), (ev.LeaseRequested("p1"), 0.0)]
    return _run(_state() if state is None else state, joined)[0]


def _run(state, events):
    """Apply (event, now) pairs; returns the final state and the actions of the last event."""
    actions = []
    for event, now in events:
        state, actions = core.apply(state, event, now)
    return state, actions


def _one(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_join_lease_progress_complete_credits_exact_tokens():
    state, _ = _run(_state(), [(ev.PeerJoined("p1", "alpha"), 0.0)])
    assert state.peers["p1"].state is PeerState.JOINING
    state, actions = core.apply(state, ev.LeaseRequested("p1"), 1.0)
    lease = _one(actions, act.LeaseGranted).lease
    assert (lease.lease_id, lease.stage, lease.shard_id, lease.position) == (
        "L1",
        0,
        state.plan.stages[0].shards[0].shard_id,
        Position(0, 0),
    )
    assert state.peers["p1"].state is PeerState.ACTIVE
    state, actions = core.apply(state, ev.ProgressReported("p1", "L1", 1, Position(2, 70)), 2.0)
    assert _one(actions, act.ReportAccepted).credited == 70
    state, actions = core.apply(state, ev.ShardCompleted("p1", "L1", 2, Position(4, 150)), 3.0)
    assert _one(actions, act.ReportAccepted).credited == 80
    assert _one(actions, act.ShardFinished).shard_id == lease.shard_id
    assert state.peers["p1"].tokens == 150
    assert state.global_tokens == 150
    assert state.stage_tokens == (150,)
    assert state.stage_completed == (1,)
    assert dict(state.leases) == {}


def test_duplicate_report_seq_is_acknowledged_without_credit():
    state = _leased()
    state, _ = core.apply(state, ev.ProgressReported("p1", "L1", 1, Position(1, 10)), 1.0)
    again, actions = core.apply(state, ev.ProgressReported("p1", "L1", 1, Position(1, 10)), 1.5)
    accepted = _one(actions, act.ReportAccepted)
    assert (accepted.credited, accepted.duplicate, accepted.peer_tokens) == (0, True, 10)
    assert again.global_tokens == 10
    # An older seq with a larger position is a stale retry, not new progress.
    stale, actions = core.apply(again, ev.ProgressReported("p1", "L1", 1, Position(2, 99)), 2.0)
    assert _one(actions, act.ReportAccepted).duplicate
    assert stale.global_tokens == 10


def _assert_bad_position(state, event, now, message):
    """``event`` is rejected as a bad position, saying ``message``, and changes nothing."""
    after, actions = core.apply(state, event, now)
    rejected = _one(actions, act.Rejected)
    assert rejected.code is act.RejectCode.BAD_POSITION
    assert message in rejected.message
    assert after is state


def test_position_going_back_is_rejected_with_message():
    state, _ = core.apply(_leased(), ev.ProgressReported("p1", "L1", 1, Position(2, 50)), 1.0)
    going_back = ev.ProgressReported("p1", "L1", 2, Position(1, 60))
    _assert_bad_position(state, going_back, 2.0, "behind the last reported")


def test_complete_needs_every_document():
    _assert_bad_position(_leased(), ev.ShardCompleted("p1", "L1", 1, Position(3, 50)), 1.0, "has 4 documents")


def test_expired_lease_goes_back_with_resume_position_to_next_peer():
    state, _ = _run(
        _leased(),
        [(ev.ProgressReported("p1", "L1", 1, Position(3, 120)), 5.0), (ev.PeerJoined("p2", "b"), 6.0)],
    )
    state, actions = core.apply(state, ev.Tick(), 15.5)  # p1 silent since 5.0 > 10 s
    returned = _one(actions, act.LeaseReturned)
    assert (returned.lease.lease_id, returned.requeued) == ("L1", True)
    assert state.peers["p1"].state is PeerState.LOST
    assert state.peers["p2"].state is PeerState.JOINING  # p2 called at 6.0: not yet over 10 s
    state, actions = core.apply(state, ev.LeaseRequested("p2"), 15.6)
    lease = _one(actions, act.LeaseGranted).lease
    assert (lease.lease_id, lease.shard_id, lease.position) == (
        "L2",
        returned.lease.shard_id,
        Position(3, 120),
    )
    # The slow first holder's late report is refused and credits nothing.
    state, actions = core.apply(state, ev.ProgressReported("p1", "L1", 2, Position(4, 200)), 16.0)
    assert _one(actions, act.Rejected).code is act.RejectCode.UNKNOWN_LEASE
    assert state.peers["p1"].tokens == 120
    state, actions = core.apply(state, ev.ShardCompleted("p2", "L2", 1, Position(4, 160)), 17.0)
    assert _one(actions, act.ReportAccepted).credited == 40
    assert state.global_tokens == 160


def test_heartbeat_keeps_lease_alive_and_stall_timeout_takes_it():
    state = _leased(_state(stall_timeout_s=25.0))
    for t in (8.0, 16.0, 24.0):
        state, _ = core.apply(state, ev.Heartbeat("p1", "training"), t)
        state, actions = core.apply(state, ev.Tick(), t + 1.0)
        assert "L1" in state.leases, actions
    state, _ = core.apply(state, ev.Heartbeat("p1", "training"), 25.5)
    state, actions = core.apply(state, ev.Tick(), 25.6)
    assert _one(actions, act.LeaseReturned).reason == "no progress for over 25 s"
    assert state.peers["p1"].state is PeerState.ACTIVE


def test_release_requeues_and_release_at_end_completes():
    state = _leased()
    state, actions = core.apply(state, ev.ShardReleased("p1", "L1", 1, Position(1, 30)), 1.0)
    assert _one(actions, act.LeaseReturned).requeued
    assert list(state.returned) == [(0, state.plan.stages[0].shards[0].shard_id)]
    state, actions = core.apply(state, ev.LeaseRequested("p1"), 2.0)
    assert _one(actions, act.LeaseGranted).lease.position == Position(1, 30)
    state, actions = core.apply(state, ev.ShardReleased("p1", "L2", 2, Position(4, 90)), 3.0)
    assert _one(actions, act.ShardFinished).lease_id == "L2"
    assert state.stage_completed == (1,)


def test_second_request_returns_existing_lease():
    state = _leased()
    state, actions = core.apply(state, ev.LeaseRequested("p1"), 1.0)
    granted = _one(actions, act.LeaseGranted)
    assert (granted.lease.lease_id, granted.existing) == ("L1", True)
    assert state.lease_counter == 1


def test_stage_advances_when_drained_and_run_finishes():
    state = _leased(_state(docs=((2,), (3,))))
    state, actions = core.apply(state, ev.ShardCompleted("p1", "L1", 1, Position(2, 10)), 1.0)
    assert _one(actions, act.StageAdvanced) == act.StageAdvanced(
        0, 1, "every shard of stage 'stage0' is completed"
    )
    state, actions = core.apply(state, ev.LeaseRequested("p1"), 2.0)
    assert _one(actions, act.LeaseGranted).lease.stage == 1
    state, actions = core.apply(state, ev.ShardCompleted("p1", "L2", 2, Position(3, 10)), 3.0)
    assert state.finished
    state, actions = core.apply(state, ev.LeaseRequested("p1"), 4.0)
    assert _one(actions, act.NoWork).finished


def test_stage_tail_waits_then_budget_ends_stage_and_skips_its_rest():
    state = _state(docs=((2, 2, 2), (2,)), budgets=[100, None])
    state, _ = _run(
        state,
        [
            (ev.PeerJoined("p1", "a"), 0.0),
            (ev.PeerJoined("p2", "b"), 0.0),
            (ev.LeaseRequested("p1"), 0.0),
            (ev.LeaseRequested("p2"), 0.0),
        ],
    )
    state, actions = core.apply(state, ev.ShardReleased("p2", "L2", 1, Position(1, 20)), 1.0)
    assert _one(actions, act.LeaseReturned).requeued
    state, actions = core.apply(state, ev.ProgressReported("p1", "L1", 1, Position(1, 100)), 2.0)
    assert _one(actions, act.StageAdvanced).reason == "stage 'stage0' reached its budget of 100 tokens"
    assert dict(state.returned) == {}  # the released shard of the ended stage is dropped
    state, actions = core.apply(state, ev.LeaseRequested("p2"), 3.0)
    assert _one(actions, act.LeaseGranted).lease.stage == 1
    # p1 may still finish its stage-0 shard; it counts toward stage 0.
    state, actions = core.apply(state, ev.ShardCompleted("p1", "L1", 2, Position(2, 150)), 4.0)
    assert _one(actions, act.ShardFinished).stage == 0
    assert state.stage_tokens == (170, 0)


def test_no_free_shard_tells_peer_to_wait():
    state, _ = _run(
        _state(docs=((2,),), retry_after_s=7.0),
        [(ev.PeerJoined("p1", "a"), 0.0), (ev.PeerJoined("p2", "b"), 0.0), (ev.LeaseRequested("p1"), 0.0)],
    )
    _, actions = core.apply(state, ev.LeaseRequested("p2"), 1.0)
    assert _one(actions, act.NoWork) == act.NoWork(
        "every shard of stage 'stage0' is leased; waiting for 1 to finish", 7.0, False
    )


def test_outer_step_quorum_and_monotonic():
    state, _ = _run(
        _state(outer_step_quorum=2),
        [(ev.PeerJoined(p, p), 0.0) for p in ("a", "b", "c")],
    )
    _, actions = core.apply(state, ev.OuterStepReported("a", 2), 1.0)  # beyond the run's step + 1
    assert _one(actions, act.Rejected).code is act.RejectCode.STEP_AHEAD
    state, _ = core.apply(state, ev.OuterStepReported("a", 1), 1.0)
    assert state.outer_step == 0  # one peer of a quorum of 2
    state, actions = core.apply(state, ev.OuterStepReported("b", 1), 1.0)
    assert _one(actions, act.OuterStepAdvanced) == act.OuterStepAdvanced(0, 1)
    state, _ = core.apply(state, ev.OuterStepReported("a", 2), 1.5)
    state, _ = core.apply(state, ev.PeerBanned("a", "test"), 2.0)
    state, _ = core.apply(state, ev.OuterStepReported("b", 2), 2.5)
    assert state.outer_step == 1  # the banned peer's step 2 no longer counts toward the quorum
    state, _ = core.apply(state, ev.OuterStepReported("c", 2), 2.5)
    assert state.outer_step == 2
    state, _ = core.apply(state, ev.PeerJoined("d", "d"), 3.0)
    assert state.peers["d"].start_outer_step == 2


def test_strikes_ban_and_banned_peer_is_refused():
    state, _ = _run(
        _state(strikes_to_ban=2),
        [(ev.PeerJoined("p1", "a"), 0.0), (ev.LeaseRequested("p1"), 0.0), (ev.PeerStruck("p1", "norm"), 1.0)],
    )
    assert state.peers["p1"].state is PeerState.ACTIVE
    state, actions = core.apply(state, ev.PeerStruck("p1", "norm again"), 2.0)
    assert state.peers["p1"].state is PeerState.BANNED
    assert _one(actions, act.LeaseReturned).reason == "peer banned"
    _, actions = core.apply(state, ev.Heartbeat("p1"), 3.0)
    assert _one(actions, act.Rejected).code is act.RejectCode.BANNED
    _, actions = core.apply(state, ev.PeerJoined("p1", "a"), 3.0)
    assert _one(actions, act.Rejected).code is act.RejectCode.BANNED


def test_leave_returns_leases_and_rejoin_keeps_credit():
    state, _ = core.apply(_leased(), ev.ProgressReported("p1", "L1", 1, Position(1, 5)), 1.0)
    state, actions = core.apply(state, ev.PeerLeft("p1"), 2.0)
    assert _one(actions, act.LeaseReturned).lease.position == Position(1, 5)
    _, actions = core.apply(state, ev.Heartbeat("p1"), 3.0)
    assert _one(actions, act.Rejected).code is act.RejectCode.PEER_GONE
    state, actions = core.apply(state, ev.PeerJoined("p1", "a2"), 4.0)
    admitted = _one(actions, act.PeerAdmitted)
    assert (admitted.rejoined, admitted.last_report_seq) == (True, 1)
    assert (state.peers["p1"].tokens, state.peers["p1"].name) == (5, "a2")


def test_restarted_gives_live_peers_fresh_deadlines():
    state = _leased()
    state, _ = core.apply(state, ev.Restarted(), 100.0)
    state, actions = core.apply(state, ev.Tick(), 105.0)
    assert "L1" in state.leases and actions == []
    state, _ = core.apply(state, ev.Tick(), 110.5)
    assert "L1" not in state.leases


def test_metrics_recorded_with_global_tokens():
    state, _ = _run(_state(), [(ev.PeerJoined("p1", "a"), 0.0)])
    state, actions = core.apply(state, ev.MetricsReported("p1", 1, 2.5, 1.25, 300.0, 10, 20, 30), 4.0)
    recorded = _one(actions, act.MetricsRecorded)
    assert (recorded.metrics.loss, recorded.metrics.val_bpb, recorded.global_tokens) == (2.5, 1.25, 0)
    assert state.peers["p1"].metrics.tokens_per_s == 300.0


def test_unchanged_parts_are_shared_between_states():
    state = _leased()
    after, _ = core.apply(state, ev.Heartbeat("p1"), 1.0)
    assert after.leases is state.leases and after.returned is state.returned
    assert after.peers is not state.peers
    ticked, actions = core.apply(after, ev.Tick(), 2.0)
    assert ticked is after and actions == []


def test_unknown_event_type_is_a_type_error():
    with pytest.raises(TypeError, match="expected one of the events"):
        core.apply(_state(), object(), 0.0)  # type: ignore[arg-type]


def test_credit_is_bounded_by_the_documents_reached_and_the_ledger_never_overflows():
    state = _leased(_state(max_tokens_per_doc=10))
    _, actions = core.apply(state, ev.ProgressReported("p1", "L1", 1, Position(0, 11)), 1.0)
    rejected = _one(actions, act.Rejected)
    assert rejected.code is act.RejectCode.BAD_POSITION
    assert rejected.message.startswith("position.tokens_consumed=11 exceeds 10 tokens, the most 1 documents")
    state, actions = core.apply(state, ev.ProgressReported("p1", "L1", 2, Position(3, 40)), 1.0)
    assert _one(actions, act.ReportAccepted).credited == 40 and state.global_tokens == 40
    _, actions = core.apply(state, ev.ShardCompleted("p1", "L1", 3, Position(4, 41)), 1.0)
    assert "exceeds 40 tokens" in _one(actions, act.Rejected).message  # 4 documents hold at most 40
    huge = _leased(_state(max_tokens_per_doc=2**62))
    huge = dataclasses.replace(huge, global_tokens=core.MAX_LEDGER_INT - 5)
    _, actions = core.apply(huge, ev.ProgressReported("p1", "L1", 1, Position(0, 6)), 1.0)
    assert "overflow the ledger's 64-bit counters" in _one(actions, act.Rejected).message


def test_a_join_token_has_bounded_live_sessions_and_its_ban_is_the_tokens():
    state = _state(max_sessions_per_token=2)
    state, _ = _run(state, [(ev.PeerJoined(p, p, token_id="t"), 0.0) for p in ("a", "b")])
    _, actions = core.apply(state, ev.PeerJoined("c", "c", token_id="t"), 1.0)
    assert _one(actions, act.Rejected).code is act.RejectCode.TOO_MANY_SESSIONS
    state, _ = core.apply(state, ev.PeerLeft("a"), 1.0)  # a departed session makes room
    state, _ = core.apply(state, ev.PeerJoined("c", "c", token_id="t"), 1.0)
    state, actions = core.apply(state, ev.PeerJoined("a", "a", token_id="u"), 1.0)  # a resume with another token
    assert "joined with another join token" in _one(actions, act.Rejected).message
    state, _ = core.apply(state, ev.PeerBanned("b", "sent NaNs"), 2.0)
    assert state.peers["c"].state is PeerState.BANNED and state.peers["c"].ban_reason == (
        "same join token as b: sent NaNs")
    _, actions = core.apply(state, ev.PeerJoined("d", "d", token_id="t"), 3.0)
    assert _one(actions, act.Rejected).message == (
        "join token t is banned (peer b: sent NaNs); it may not join again")


def test_the_quorum_counts_join_tokens_of_live_peers():
    state = _state(outer_step_quorum=2, lease_timeout_s=5.0)
    state, _ = _run(state, [(ev.PeerJoined(p, p, token_id=t), 0.0) for p, t in (("a", "t"), ("b", "t"), ("c", "u"))])
    state, _ = _run(state, [(ev.OuterStepReported("a", 1), 1.0), (ev.OuterStepReported("b", 1), 1.0)])
    assert state.outer_step == 0  # two sessions of one token
    state, _ = core.apply(state, ev.OuterStepReported("c", 1), 1.0)
    assert state.outer_step == 1
    state, _ = _run(state, [(ev.OuterStepReported("c", 2), 2.0), (ev.Tick(), 8.0)])  # c is lost
    state, _ = core.apply(state, ev.OuterStepReported("a", 2), 8.0)
    assert state.outer_step == 1

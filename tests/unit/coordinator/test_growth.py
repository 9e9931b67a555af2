# SPDX-License-Identifier: AGPL-3.0-or-later
"""Model growth in the coordinator: the plan knows each stage's shape, the core announces the growth for
GROWTH_LEAD_STEPS after the highest step the run or a live peer reached when the growing stage begins, the ledger keeps it across a restart, and
the status snapshot and page show the model stage, its parameters and the next growth point."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from coordinator import actions as act
from coordinator import core
from coordinator import events as ev
from coordinator.plan import RunPlan, synthetic_plan
from coordinator.state import Position, initial_state
from coordinator.status import RunInfo, build_snapshot, model_summary
from coordinator.storage import Storage
from coordinator.web import render_page
from tests.helpers.coordinator_service import core_config


def _plan() -> RunPlan:
    """Three stages of 100 tokens; stage 1 grows the model (stage 0's shape -> model stage 1), stage 2 keeps it."""
    plan = synthetic_plan([[2, 2], [2, 2], [2, 2]], [100, 100, 100])
    shapes = [(0, 1000, "4 layers × 144 (vanilla)"), (1, 1800, "8 layers × 144 (zero ×2)"),
              (1, 1800, "8 layers × 144 (zero ×2)")]
    return RunPlan.from_stages([
        dataclasses.replace(stage, model_stage=m, model_params=n, model_label=label)
        for stage, (m, n, label) in zip(plan.stages, shapes, strict=True)])


def _state():
    return initial_state(_plan(), core_config(lease_timeout_s=10.0, max_leases_per_peer=1))


def _run(state, events):
    actions = []
    for event, now in events:
        state, actions = core.apply(state, event, now)
    return state, actions


def test_the_plan_says_which_stage_grows() -> None:
    plan = _plan()
    assert [plan.grows_at(i) for i in range(4)] == [False, True, False, False]


def test_the_growth_is_announced_for_the_run_step_plus_the_lead_when_its_stage_begins() -> None:
    state, _ = _run(_state(), [(ev.PeerJoined("a", "a"), 0.0), (ev.LeaseRequested("a"), 0.0)])
    state, _ = _run(state, [(ev.OuterStepReported("a", 1), 1.0), (ev.OuterStepReported("a", 2), 1.0)])
    assert (state.outer_step, state.growth_steps, state.announced_growths) == (2, (-1, -1, -1), ())
    state, actions = core.apply(state, ev.ProgressReported("a", "L1", 1, Position(1, 100)), 2.0)
    advanced = [a for a in actions if isinstance(a, act.StageAdvanced)]
    assert advanced == [act.StageAdvanced(0, 1, "stage 'stage0' reached its budget of 100 tokens", 4)]
    assert core.GROWTH_LEAD_STEPS == 2
    assert (state.stage_index, state.growth_steps, state.announced_growths) == (1, (-1, 4, -1), (4,))
    # stage 2 keeps the model: nothing more is announced when it begins; b's report counts from now on
    state, actions = _run(state, [(ev.PeerJoined("b", "b"), 3.0), (ev.LeaseRequested("b"), 3.0)])
    lease = next(a.lease for a in actions if isinstance(a, act.LeaseGranted))
    assert (lease.lease_id, lease.stage) == ("L2", 1)
    state, actions = core.apply(state, ev.ProgressReported("b", "L2", 1, Position(1, 100)), 4.0)
    assert [a.growth_step for a in actions if isinstance(a, act.StageAdvanced)] == [-1]
    assert (state.stage_index, state.announced_growths) == (2, (4,))


def test_the_status_shows_the_model_stage_and_the_next_growth_point() -> None:
    state = _state()
    assert model_summary(state) == {
        "stage": 0, "label": "4 layers × 144 (vanilla)", "params": 1000, "curriculum_model_stage": 0,
        "next_growth": {"stage_index": 1, "stage_name": "stage1", "at_tokens": 100, "outer_step": None,
                        "model_label": "8 layers × 144 (zero ×2)", "model_params": 1800}}
    announced = dataclasses.replace(state, stage_index=1, growth_steps=(-1, 4, -1), outer_step=3)
    summary = model_summary(announced)
    assert (summary["stage"], summary["curriculum_model_stage"], summary["next_growth"]["outer_step"]) == (0, 1, 4)
    grown = dataclasses.replace(announced, outer_step=4)
    assert model_summary(grown) == {"stage": 1, "label": "8 layers × 144 (zero ×2)", "params": 1800,
                                    "curriculum_model_stage": 1, "next_growth": None}


def test_the_page_shows_each_stage_s_model_and_the_next_growth() -> None:
    state = dataclasses.replace(_state(), stage_index=1, growth_steps=(-1, 4, -1), outer_step=3)
    page = render_page(build_snapshot(state, [], run=RunInfo("grow", "debug", "vanilla"), now=1.0, tokens_per_s=0.0))
    assert ('model stage <b id="model-stage">0 · 4 layers × 144 (vanilla) · 1.00 K params</b> · next growth '
            '<b id="next-growth">stage1 at 100 tokens (outer step 4) → 1.80 K params</b>') in page
    assert "<td>8 layers × 144 (zero ×2) · 1.80 K params · grows after outer step 4</td>" in page


def test_the_ledger_keeps_the_announced_growths_across_a_restart(tmp_path: Path) -> None:
    plan, config = _plan(), core_config()
    storage = Storage(tmp_path / "c.db")
    old = storage.load(plan, config)
    assert old.growth_steps == (-1, -1, -1)
    new = dataclasses.replace(old, stage_index=1, growth_steps=(-1, 7, -1))
    storage.commit(old, new, [])
    storage.close()
    storage = Storage(tmp_path / "c.db")
    assert storage.load(plan, config).growth_steps == (-1, 7, -1)
    storage.close()


def test_a_peer_ahead_of_the_run_s_step_moves_the_growth_step_later() -> None:
    events = [(ev.PeerJoined("a", "a"), 0.0), (ev.LeaseRequested("a"), 0.0)]
    state, _ = _run(_state(), [*events, (ev.OuterStepReported("a", 1), 1.0)])
    state = dataclasses.replace(state, peers={"a": dataclasses.replace(state.peers["a"], outer_step=5)})
    assert state.outer_step == 1
    state, actions = core.apply(state, ev.ProgressReported("a", "L1", 1, Position(1, 100)), 2.0)
    assert [a.growth_step for a in actions if isinstance(a, act.StageAdvanced)] == [7]
    assert state.announced_growths == (7,)


def test_a_ledger_from_before_growth_loads_with_nothing_announced(tmp_path: Path) -> None:
    plan, config = _plan(), core_config()
    storage = Storage(tmp_path / "c.db")
    old = storage.load(plan, config)
    storage.commit(old, dataclasses.replace(old, stage_index=1, growth_steps=(-1, 7, -1)), [])
    storage._conn.execute("DELETE FROM meta WHERE key = 'growth_steps'")  # as written before the field existed
    storage.close()
    storage = Storage(tmp_path / "c.db")
    loaded = storage.load(plan, config)
    assert (loaded.stage_index, loaded.growth_steps) == (1, (-1, -1, -1))
    storage.close()

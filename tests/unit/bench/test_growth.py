# SPDX-License-Identifier: AGPL-3.0-or-later
"""bench.growth's JSON building: FLOPs to reach the scratch model's bpb, savings, the logit-change maximum."""

from __future__ import annotations

import pytest

from bench.growth import flops_to_reach, summarize


def run(name: str, curve: list[list[float]], events: list[dict] = ()) -> dict:
    return dict(name=name, group=name.split("/")[0], flops=curve[-1][0], val_bpb=curve[-1][1], curve=curve,
                growth=list(events))


def test_flops_to_reach_interpolates_between_curve_points() -> None:
    curve = [[10.0, 3.0], [20.0, 2.0], [30.0, 1.5]]
    assert flops_to_reach(curve, 2.5) == 15.0
    assert flops_to_reach(curve, 3.5) == 10.0
    assert flops_to_reach(curve, 1.0) is None


def test_summarize_reports_savings_and_none_when_growth_did_not_pay() -> None:
    runs = [
        run("depth/scratch", [[50.0, 3.0], [100.0, 2.0]]),
        run("depth/stack@50%", [[25.0, 2.5], [50.0, 1.9], [50.0, 2.2], [100.0, 2.1]],
            [dict(operator="stack", logit_change=0.5, curve_index=2)]),
        run("depth/stack@25%", [[25.0, 3.2], [25.0, 3.4], [50.0, 2.5], [100.0, 1.5]],
            [dict(operator="stack", logit_change=0.9, curve_index=1)]),
        run("depth/zero@25%", [[25.0, 3.2], [25.0, 3.2], [100.0, 2.1]], [dict(operator="zero", logit_change=0.0, curve_index=1)]),
        run("width/scratch", [[100.0, 2.0]]),
        run("width/widen@25%", [[100.0, 1.9]], [dict(operator="widen", logit_change=2e-6, curve_index=0)]),
    ]
    out = summarize(runs)
    # stack@50%'s small model was below 2.0 before growing: only the grown model's points count.
    assert out["flops_saved_fraction"] == {"depth/stack@50%": None, "depth/stack@25%": pytest.approx(0.25),
                                           "depth/zero@25%": None,
                                           "width/widen@25%": 0.0}
    assert out["max_logit_change"] == 2e-6  # stacking changes the function on purpose: not counted
    assert runs[3]["bpb_vs_scratch"] == pytest.approx(0.1)
    assert [r["name"] for r in out["runs"]] == [r["name"] for r in runs]

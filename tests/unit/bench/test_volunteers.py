# SPDX-License-Identifier: AGPL-3.0-or-later
"""bench.volunteers sizes its blocking runs from the time-boxed ones it measured first."""

from __future__ import annotations

from bench import volunteers


def test_fixed_runs_the_fast_peers_steps_per_period_and_equal_the_overlapped_tokens() -> None:
    per_round = volunteers.BATCH * volunteers.SEQ_LEN
    boxed = {"mode": "timeboxed", "speeds": list(volunteers.SPEEDS), "tokens": 0,
             "tokens_per_peer": [5 * 300 * per_round, 5 * 310 * per_round, 5 * 150 * per_round, 5 * 75 * per_round]}
    boxed["tokens"] = sum(boxed["tokens_per_peer"])
    overlapped = {**boxed, "mode": "overlapped", "tokens": 4 * 5 * 200 * per_round}
    fixed = volunteers.plan("fixed", 5, [boxed, overlapped])
    assert (fixed.inner_steps, fixed.speeds, fixed.diloco) == (305, volunteers.SPEEDS, {})
    equal = volunteers.plan("equal", 5, [boxed, overlapped])
    assert (equal.inner_steps, equal.speeds) == (200, (1.0, 1.0, 1.0, 1.0))
    assert volunteers.plan("overlapped", 5, []).diloco == {"period_s": volunteers.PERIOD_S, "overlap": True}

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The pure parts of bench.internet: a configuration's figures from hand-made peer diaries (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.internet import markdown, reached, same_hashes, summarize, until_step


def rnd(t: float, k: int, seconds: float, sent: int, *, group: int = 2) -> list[dict[str, Any]]:
    return [{"event": "round_start", "t": t - seconds, "round": k},
            {"event": "round", "t": t, "round": k, "status": "ok" if group > 1 else "alone", "applied": True,
             "group_size": group, "seconds": seconds, "matchmaking_s": 0.5, "allreduce_s": seconds - 0.5,
             "bytes_sent": sent, "bytes_received": sent}]


def step(t: float, k: int, digest: str, step_s: float) -> dict[str, Any]:
    return {"event": "outer_step", "t": t, "outer_step": k, "params_sha256": digest, "step_s": step_s,
            "tokens": 640, "group_size": 2}


def diary(round_s: tuple[float, float], sent: tuple[int, int], *, last: str = "h2") -> list[dict[str, Any]]:
    return [{"event": "state", "t": 0.0, "outer_step": 0, "params_sha256": "h0", "source": "init"},
            *rnd(12.0, 1, round_s[0], sent[0]), step(13.0, 1, "h1", 8.0),
            *rnd(24.0, 2, round_s[1], sent[1]), step(25.0, 2, last, 9.0)]


def test_summary_of_two_peers() -> None:
    public = diary((2.0, 4.0), (1000, 3000))
    # a group of one moves no bytes: not part of round_s nor bytes_per_peer
    home = [*diary((3.0, 5.0), (2000, 4000)), *rnd(30.0, 3, 1.0, 0, group=1)]
    row = summarize([public, home], ["public", "home"], uplink_mbit=20)
    assert row["round_s"] == 3.5  # median of 2, 4, 3, 5
    assert row["bytes_per_peer"] == 2500  # median of 1000, 3000, 2000, 4000
    assert row["expected_s"] == pytest.approx(2500 * 8 / 20e6)
    assert row["round_ratio"] == pytest.approx(3.5 / (2500 * 8 / 20e6))
    assert row["bytes_by_kind"] == {"home": 3000, "public": 2000}
    assert row["expected_busiest_s"] == pytest.approx(3000 * 8 / 20e6)
    assert row["round_ratio_busiest"] == pytest.approx(3.5 / (3000 * 8 / 20e6))
    assert row["group_sizes"] == [1, 2]
    # one whole cycle (outer step 1 -> 2: 12 s), 9 s of it inside optimizer steps
    assert row["utilization_per_peer"] == [0.75, 0.75]
    assert row["utilization"] == 0.75
    assert row["same_hashes"] is True
    assert [p["kind"] for p in row["per_peer"]] == ["public", "home"]
    assert "| 3.50 |" in markdown({"configs": [{"name": "debug-20mbit", "uplink_mbit": 20, "peers": 2,
                                                "nat_peers": 1, **row}], "note": "n", "machine": {"cpu_count": 2}})


def test_same_hashes() -> None:
    assert same_hashes([diary((1, 1), (1, 1)), diary((1, 1), (1, 1))])
    assert not same_hashes([diary((1, 1), (1, 1)), diary((1, 1), (1, 1), last="other")])
    assert not same_hashes([[], []])  # nothing logged: nothing shown to agree


def test_a_diary_is_cut_after_step_k() -> None:
    events = [*diary((1, 1), (1, 1)), *rnd(40.0, 3, 1.0, 0, group=1), step(41.0, 3, "alone", 9.0)]
    assert reached(events, 3) and not reached(until_step(events, 2), 3)
    assert until_step(events, 2) == diary((1, 1), (1, 1))


def test_a_failed_configuration_renders() -> None:
    row = {"name": "lila-20m-5mbit", "uplink_mbit": 5, "peers": 4, "nat_peers": 2, "round_s": None,
           "bytes_per_peer": None, "utilization": None, "same_hashes": False, "error": "TestbedError: boom"}
    text = markdown({"configs": [row], "note": "no latency.", "machine": {"cpu_count": 2}})
    assert "TestbedError: boom" in text and "| NO |" in text and "Machine: 2 CPUs." in text

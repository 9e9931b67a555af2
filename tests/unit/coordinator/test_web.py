# SPDX-License-Identifier: AGPL-3.0-or-later
"""Status snapshot, page rendering, Prometheus exposition and the aiohttp routes (in-process)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from aiohttp.test_utils import TestClient, TestServer

from coordinator import core
from coordinator import events as ev
from coordinator.metrics import CoordinatorMetrics
from coordinator.plan import synthetic_plan
from coordinator.state import Hardware, Position, initial_state
from coordinator.status import RunInfo, StatusBoard, build_snapshot, prometheus_targets
from coordinator.storage import MetricsRow
from coordinator.web import STATIC_DIR, StatusWeb, render_page
from tests.helpers.coordinator_service import core_config

RUN = RunInfo("demo-run", "debug", "e8")
EVIL = "<script>alert(1)</script>"


def _state():
    state = initial_state(
        synthetic_plan([[2, 2], [3]], budgets=[1000, None]), core_config(lease_timeout_s=10.0)
    )
    events = [
        (ev.PeerJoined("p1", "alice", Hardware("cuda", "H200"), "0.1", "10.0.0.1:9100"), 0.0),
        (ev.PeerJoined("p2", EVIL, Hardware("cpu", ""), "0.1", ""), 0.0),
        (ev.PeerJoined("p3", "carol"), 0.0),
        (ev.LeaseRequested("p1"), 1.0),
        (ev.ProgressReported("p1", "L1", 1, Position(1, 250)), 2.0),
        (ev.MetricsReported("p1", 1, 3.0, None, 120.0), 2.0),
        (ev.LeaseRequested("p2"), 2.0),
        (ev.ShardCompleted("p2", "L2", 1, Position(2, 50)), 3.0),
        (ev.PeerBanned("p3", "sent NaNs"), 4.0),
    ]
    for event, now in events:
        state, _ = core.apply(state, event, now)
    return state


HISTORY = [
    MetricsRow(1.0, "p1", 1, 100, 3.0, None, 120.0),
    MetricsRow(1.5, "p2", 1, 150, 5.0, 2.0, 80.0),
    MetricsRow(2.0, "p1", 2, 300, 2.5, 1.5, 130.0),
]


def test_snapshot_has_exact_run_figures():
    snap = build_snapshot(_state(), HISTORY, run=RUN, now=6.0, tokens_per_s=12.5)
    assert (snap["global_tokens"], snap["tokens_per_s"], snap["outer_step"], snap["stage_name"]) == (
        300,
        12.5,
        0,
        "stage0",
    )
    assert snap["peers_by_state"] == {"joining": 0, "active": 2, "lost": 0, "left": 0, "banned": 1}
    assert [s["progress"] for s in snap["stages"]] == [0.3, 0.0]
    assert [(s["shards_completed"], s["shards_leased"], s["status"]) for s in snap["stages"]] == [
        (1, 1, "current"),
        (0, 0, "pending"),
    ]
    assert snap["shards"] == {"total": 3, "completed": 1, "leased": 1, "queued": 0}
    assert [(p["name"], p["tokens"]) for p in snap["leaderboard"]] == [("alice", 250), (EVIL, 50)]
    assert snap["banned"] == [{"peer_id": "p3", "name": "carol", "reason": "sent NaNs"}]
    assert snap["history"] == [
        {"outer_step": 1, "t": 1.5, "global_tokens": 150, "loss": 4.0, "val_bpb": 2.0, "reports": 2},
        {"outer_step": 2, "t": 2.0, "global_tokens": 300, "loss": 2.5, "val_bpb": 1.5, "reports": 1},
    ]
    assert (snap["loss"], snap["val_bpb"]) == (2.5, 1.5)
    alice = next(p for p in snap["peers"] if p["name"] == "alice")
    assert (alice["device"], alice["tokens_per_s"], alice["last_seen_s"]) == ("cuda H200", 120.0, 4.0)
    json.dumps(snap)  # JSON-ready


def test_page_escapes_peer_text_and_embeds_history():
    snap = build_snapshot(_state(), HISTORY, run=RUN, now=6.0, tokens_per_s=0.0)
    page = render_page(snap)
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "debug (e8)" in page and "demo-run" in page
    start = page.index('<script id="lila-history" type="application/json">') + len(
        '<script id="lila-history" type="application/json">'
    )
    embedded = json.loads(page[start : page.index("</script>", start)])
    assert [p["loss"] for p in embedded] == [4.0, 2.5]
    assert 'style="width:30.0%"' in page


def test_standalone_page_inlines_style_and_chart_and_does_not_refresh():
    snap = build_snapshot(_state(), HISTORY, run=RUN, now=6.0, tokens_per_s=0.0)
    live = render_page(snap, refresh_s=7)
    static = {name: ((STATIC_DIR / name).read_bytes(), "") for name in ("style.css", "chart.js")}
    alone = render_page(snap, inline=static)
    assert '<meta http-equiv="refresh" content="7">' in live and "/static/" in live
    assert "http-equiv" not in alone and "/static/" not in alone
    for name in ("style.css", "chart.js"):
        assert static[name][0].decode() in alone
    # the same page otherwise: the body between the header and the script is equal
    assert live[live.index("<body>") : live.index("<script src=")] == alone[alone.index("<body>") : alone.index("<script>\n")]


def test_prometheus_targets_list_live_peers_with_addresses_that_the_public_snapshot_hides():
    state = _state()
    assert prometheus_targets(state) == [
        {"targets": ["10.0.0.1:9100"], "labels": {"job": "lila-peer", "peer_id": "p1", "peer_name": "alice"}}
    ]
    # volunteers' addresses stay off the public page and /api/status
    snap = build_snapshot(state, [], run=RUN, now=6.0, tokens_per_s=0.0)
    assert "10.0.0.1" not in json.dumps(snap) and "10.0.0.1" not in render_page(snap)


def test_routes_serve_the_cached_snapshot():
    state = _state()
    metrics = CoordinatorMetrics()
    board = StatusBoard(
        state=lambda: state, history=lambda n: HISTORY[-n:], run=RUN, refresh_s=1.0, history_limit=2
    )
    board.listeners.append(metrics.set_snapshot)
    web = StatusWeb(board=board, metrics=metrics)
    board.refresh()
    metrics.observe_rpc("Heartbeat", "OK", 0.002)

    async def scenario() -> dict:
        client = TestClient(TestServer(web.app()))
        await client.start_server()
        try:
            out = {}
            for path in (
                "/",
                "/snapshot.html",
                "/api/status",
                "/metrics",
                "/api/prometheus-targets",
                "/static/chart.js",
                "/static/nope.js",
            ):
                response = await client.get(path)
                out[path] = (response.status, response.headers.get("Content-Type", ""), await response.text())
            return out
        finally:
            await client.close()

    out = asyncio.run(scenario())
    assert out["/"][0] == 200 and "alice" in out["/"][2]
    assert out["/snapshot.html"][0] == 200 and "alice" in out["/snapshot.html"][2]
    assert out["/snapshot.html"][1].startswith("text/html") and "/static/" not in out["/snapshot.html"][2]
    assert json.loads(out["/api/status"][2])["global_tokens"] == 300
    body = out["/metrics"][2]
    for line in (
        'lila_peers{state="active"} 2.0',
        'lila_peers{state="banned"} 1.0',
        "lila_tokens_total 300.0",
        'lila_shards{state="completed"} 1.0',
        'lila_leases{state="held"} 1.0',
        "lila_loss 2.5",
        "lila_val_bpb 1.5",
        'lila_rpc_requests_total{code="OK",method="Heartbeat"} 1.0',
        'lila_rpc_latency_seconds_bucket{le="0.0025",method="Heartbeat"} 1.0',
    ):
        assert line in body.splitlines(), line
    assert json.loads(out["/api/prometheus-targets"][2])[0]["targets"] == ["10.0.0.1:9100"]
    assert out["/static/chart.js"][0] == 200 and "createElementNS" in out["/static/chart.js"][2]
    assert out["/static/nope.js"][0] == 404


def test_tokens_per_second_from_successive_refreshes():
    clock = iter([0.0, 10.0])
    states = iter([initial_state(synthetic_plan([[1]]), core_config()), _state()])
    board = StatusBoard(
        state=lambda: next(states),
        history=lambda n: [],
        run=RUN,
        refresh_s=1.0,
        history_limit=1,
        clock=lambda: next(clock),
    )
    assert board.refresh()["tokens_per_s"] == 0.0
    assert board.refresh()["tokens_per_s"] == 30.0  # 300 tokens in 10 s


def test_header_names_the_stage_and_says_finished_once_the_run_is():
    running = render_page(build_snapshot(_state(), HISTORY, run=RUN, now=6.0, tokens_per_s=0.0))
    assert '<b id="stage-name">stage0</b>' in running
    state = _state()
    done = dataclasses.replace(state, stage_index=len(state.plan.stages), leases={})
    snap = build_snapshot(done, HISTORY, run=RUN, now=6.0, tokens_per_s=0.0)
    assert snap["finished"] and snap["stage_name"] == ""
    page = render_page(snap)
    assert '<b id="stage-name">stage1 (finished)</b>' in page and "stage <b id=\"stage-name\">–" not in page

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Split detection: the parameter hashes peers report with each outer step, compared per step by the pure core
(distinct hashes, groups of one, the majority and who must re-sync), shown on the status page, /api/status and
/metrics; and the peers' link rates and reachability from ReportMetrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from coordinator import actions as act
from coordinator import core, splits
from coordinator import events as ev
from coordinator.auth import create_join_token
from coordinator.metrics import CoordinatorMetrics
from coordinator.plan import synthetic_plan
from coordinator.settings import ServerSettings
from coordinator.state import PeerState, Split, initial_state
from coordinator.status import RunInfo, build_snapshot
from coordinator.storage import Storage
from coordinator.web import StatusWeb, render_page
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from peer.coordinator_client import CoordinatorClient, OuterStepAnswer
from tests.helpers.coordinator_service import core_config, in_process_service

A, B, C = "a" * 64, "b" * 64, "c" * 64
RUN = RunInfo("r", "debug")


def _state(*names: str, active: bool = True):
    """Peers ``names`` joined (and active: each asked for data) in a run with plenty of shards."""
    state = initial_state(synthetic_plan([[4] * 8]), core_config(lease_timeout_s=100.0))
    for name in names:
        state, _ = core.apply(state, ev.PeerJoined(name, name), 0.0)
        if active:
            state, _ = core.apply(state, ev.LeaseRequested(name), 0.0)
    return state


def _report(state, peer, step, sha="", group=0, now=1.0):
    if step > state.outer_step + 1:  # the run is at the step before (peers report one step at a time)
        state = dataclasses.replace(state, outer_step=step - 1)
    state, actions = core.apply(state, ev.OuterStepReported(peer, step, params_sha256=sha, group_size=group), now)
    (compared,) = [a for a in actions if isinstance(a, act.ParamsCompared)]
    found = [a.split for a in actions if isinstance(a, act.SplitFound)]
    return state, compared, found


def test_two_hashes_at_a_step_are_a_split_and_the_minority_is_told_to_resync():
    state = _state("a", "b", "c")
    state, first, found = _report(state, "a", 1, A, 3)
    assert (first.majority, first.resync, found) == ("", False, [])  # nobody to compare with yet
    state, second, found = _report(state, "b", 1, A, 3)
    assert (second.majority, second.resync, found) == (A, False, [])
    state, third, found = _report(state, "c", 1, B, 1, now=2.0)
    assert (third.peer_id, third.outer_step, third.majority, third.resync) == ("c", 1, A, True)
    assert found == [state.splits.latest]
    assert state.splits.latest == Split(1, ((A, 2), (B, 1)), 1, 3, A, 2.0)
    assert (state.splits.found, state.splits.split_steps) == (1, frozenset({1}))
    state, again, found = _report(state, "a", 1, A, 3)  # the same peer again: counted once, the step once
    assert (again.majority, again.resync, found) == (A, False, [])
    assert state.splits.found == 1 and state.splits.latest.hashes == ((A, 2), (B, 1))
    assert state.outer_step == 1  # the run's outer step follows the reports exactly as before


def test_a_tie_is_a_split_without_a_majority_so_nobody_resyncs():
    state = _state("a", "b", "c", "d")
    results = []
    for peer, sha in (("a", A), ("b", B), ("c", A), ("d", B)):
        state, compared, _ = _report(state, peer, 4, sha, 2)
        results.append((compared.majority, compared.resync))
    assert results == [("", False), ("", False), (A, False), ("", False)]
    assert state.splits.latest == Split(4, ((A, 2), (B, 2)), 0, 4, "", 1.0)
    assert state.splits.found == 1


def test_several_groups_of_one_while_several_are_active_are_a_split():
    state = _state("a", "b", "c")
    state, _, found = _report(state, "a", 2, A, 1)
    assert found == []  # one peer alone is no split
    state, _, found = _report(state, "b", 2, A, 1)
    assert found == [Split(2, ((A, 2),), 2, 3, A, 1.0)]
    quiet = _state("a", "b", "c", active=False)  # joined, never asked for data: nobody is active
    quiet, _, _ = _report(quiet, "a", 2, A, 1)
    quiet, _, found = _report(quiet, "b", 2, B, 1)
    assert found == [Split(2, ((A, 1), (B, 1)), 2, 0, "", 1.0)]  # split by hashes all the same
    alone = _state("a", "b", "c", active=False)
    alone, _, _ = _report(alone, "a", 2, A, 1)
    alone, _, found = _report(alone, "b", 2, A, 1)
    assert found == [] and alone.splits.found == 0  # alone but nobody active: not counted
    unsaid = _state("a", "b", "c")
    for peer in "abc":
        unsaid, _, found = _report(unsaid, peer, 2, A, 0)  # group size not said: never "alone"
        assert found == []


def test_banned_and_departed_peers_do_not_count():
    state = _state("a", "b", "c", "d")
    state, _, _ = _report(state, "a", 3, B, 2)
    state, _, _ = _report(state, "b", 3, B, 2)
    state, _ = core.apply(state, ev.PeerBanned("a", "sent NaNs"), 1.0)
    state, _ = core.apply(state, ev.PeerLeft("b"), 1.0)
    assert (state.peers["a"].state, state.peers["b"].state) == (PeerState.BANNED, PeerState.LEFT)
    state, first, found = _report(state, "c", 3, A, 2)
    assert (first.majority, found) == ("", [])  # only c counts: nothing to compare with
    state, second, found = _report(state, "d", 3, A, 2)
    assert (second.majority, second.resync, found) == (A, False, [])
    assert state.splits.found == 0 and state.splits.latest is None
    assert splits.latest_comparison(state.splits, state.peers) == splits.Comparison(3, 1)
    _, actions = core.apply(state, ev.OuterStepReported("a", 4, params_sha256=A), 2.0)
    assert actions[0].code is act.RejectCode.BANNED  # a banned peer cannot report at all


def test_history_keeps_only_the_last_steps_and_ignores_older_reports():
    state = _state("a", "b")
    last = 20
    for step in range(1, last + 1):
        state, _, _ = _report(state, "a", step, A, 1)
        state, _, _ = _report(state, "b", step, B, 1)
    kept = sorted(state.splits.steps)
    assert kept == list(range(last - splits.SPLIT_HISTORY_STEPS + 1, last + 1))
    assert state.splits.split_steps == frozenset(kept) and state.splits.found == last
    before = state.splits
    state, late, found = _report(state, "b", last - splits.SPLIT_HISTORY_STEPS, C, 2)
    assert (late.majority, late.resync, found) == ("", False, []) and state.splits is before
    state, old_client, _ = _report(state, "a", last)  # neither a hash nor a group size: an older peer
    assert (old_client.majority, old_client.resync) == ("", False) and state.splits is before
    assert state.splits.latest.step == last


def test_snapshot_page_and_metrics_show_the_split_and_the_links():
    state = _state("a", "b", "c")
    for peer, sha in (("a", A), ("b", A), ("c", B)):
        state, _, _ = _report(state, peer, 5, sha, 3)
    state, _ = core.apply(
        state,
        ev.MetricsReported("a", 5, 2.0, None, 10.0, uplink_bytes_per_s=2.5e6, downlink_bytes_per_s=8e5,
                           reachability="relayed"),
        2.0,
    )
    snap = build_snapshot(state, [], run=RUN, now=3.0, tokens_per_s=0.0)
    assert snap["splits"] == {
        "count": 1,
        "latest": {
            "outer_step": 5,
            "hashes": [{"params_sha256": A, "peers": 2}, {"params_sha256": B, "peers": 1}],
            "groups_of_one": 0,
            "active_peers": 3,
            "majority_sha256": A,
            "at": 1.0,
        },
        "compared_step": 5,
        "distinct_hashes": 2,
    }
    a = next(p for p in snap["peers"] if p["name"] == "a")
    assert (a["uplink_bytes_per_s"], a["downlink_bytes_per_s"], a["reachability"]) == (2.5e6, 8e5, "relayed")
    assert snap["live_peers_by_reachability"] == {"direct": 0, "relayed": 1, "client": 0, "unknown": 2}
    page = render_page(snap)
    assert "1 split outer step; latest: outer step 5, 2 distinct parameter hashes, 0 peers averaged alone" in page
    assert f"<code>{A[:16]}…</code></td><td class=\"num\">2</td><td>majority</td>" in page
    assert f"<code>{B[:16]}…</code></td><td class=\"num\">1</td><td>re-sync</td>" in page
    assert "<td>relayed</td><td class=\"num\">2.5 MB/s / 800.0 kB/s</td>" in page
    metrics = CoordinatorMetrics()
    metrics.set_snapshot(snap)
    lines = metrics.render().decode().splitlines()
    for line in (
        "lila_splits_total 1.0",
        "lila_params_hashes 2.0",
        'lila_peers_reachability{reachability="relayed"} 1.0',
        'lila_peers_reachability{reachability="unknown"} 2.0',
    ):
        assert line in lines, line


def test_a_quiet_run_shows_no_split():
    state = _state("a", "b")
    for peer in "ab":
        state, _, _ = _report(state, peer, 1, A, 2)
    snap = build_snapshot(state, [], run=RUN, now=3.0, tokens_per_s=0.0)
    assert snap["splits"] == {"count": 0, "latest": None, "compared_step": 1, "distinct_hashes": 1}
    assert "no split found" in render_page(snap)


def test_link_rates_and_reachability_survive_a_restart(tmp_path):
    plan, config = synthetic_plan([[4]]), core_config()
    storage = Storage(tmp_path / "run.db")
    state = storage.load(plan, config)
    for event in (ev.PeerJoined("a", "a"),
                  ev.MetricsReported("a", 1, 2.0, None, 10.0, uplink_bytes_per_s=1e6, reachability="direct")):
        new, actions = core.apply(state, event, 1.0)
        storage.commit(state, new, actions)
        state = new
    storage.close()
    metrics = Storage(tmp_path / "run.db").load(plan, config).peers["a"].metrics
    assert (metrics.uplink_bytes_per_s, metrics.downlink_bytes_per_s, metrics.reachability) == (1e6, 0.0, "direct")


# --------------------------------------------------------------------------- through the real gRPC service


def test_three_peers_over_grpc_the_minority_gets_resync_and_status_and_metrics_show_it(tmp_path):
    storage = Storage(tmp_path / "run.db")
    built = in_process_service(storage, ServerSettings.of(), run="r")
    board, metrics = built.service.status, built.service.metrics
    board.listeners.append(metrics.set_snapshot)
    web = StatusWeb(board=board, metrics=metrics)

    async def scenario():
        async with built.serving() as address:
            clients = [CoordinatorClient(address, retry_for_s=0.0) for _ in range(3)]
            try:
                answers = []
                for name, client, sha in zip("abc", clients, (A, A, B), strict=True):
                    token = create_join_token(storage, label=name, now=time.time())[1]  # peers count per token
                    await asyncio.to_thread(client.join, join_token=token, peer_name=name, device_type="cpu",
                                            device_name="", memory_bytes=0, cpu_cores=1)
                    answers.append(await asyncio.to_thread(client.report_outer_step, 1, params_sha256=sha,
                                                           group_size=3))
                await asyncio.to_thread(client.report_metrics, outer_step=1, loss=2.0, tokens_per_s=5.0,
                                        uplink_bytes_per_s=1.5e6, downlink_bytes_per_s=3e6, reachability="client")
                refused = await _refusals(address, built.token)
            finally:
                for client in clients:
                    client.close()
            board.refresh()
            http = TestClient(TestServer(web.app()))
            await http.start_server()
            try:
                status = json.loads(await (await http.get("/api/status")).text())
                text = await (await http.get("/metrics")).text()
                page = await (await http.get("/")).text()
            finally:
                await http.close()
            return answers, refused, status, text, page

    answers, refused, status, text, page = asyncio.run(scenario())
    assert answers == [
        OuterStepAnswer(current_outer_step=1, resync=False, majority_sha256=""),
        OuterStepAnswer(current_outer_step=1, resync=False, majority_sha256=A),
        OuterStepAnswer(current_outer_step=1, resync=True, majority_sha256=A),
    ]
    assert status["splits"]["count"] == 1 and status["splits"]["distinct_hashes"] == 2
    assert status["splits"]["latest"]["hashes"] == [{"params_sha256": A, "peers": 2}, {"params_sha256": B, "peers": 1}]
    c = next(p for p in status["peers"] if p["name"] == "c")
    assert (c["uplink_bytes_per_s"], c["downlink_bytes_per_s"], c["reachability"]) == (1.5e6, 3e6, "client")
    assert "lila_splits_total 1.0" in text.splitlines() and "lila_params_hashes 2.0" in text.splitlines()
    assert "1 split outer step; latest: outer step 1" in page
    assert refused == [
        "params_sha256 has 31 bytes: send the raw 32-byte SHA-256 digest (not its hex text), or nothing",
        "params_sha256 has 64 bytes: send the raw 32-byte SHA-256 digest (not its hex text), or nothing",
        "group_size=70000: must be between 0 (unknown) and 65536 peers",
        "reachability='carrier-pigeon': use one of direct, relayed, client, or leave it empty",
        "uplink_bytes_per_s=nan: must be a finite number >= 0",
        "downlink_bytes_per_s=-1.0: must be a finite number >= 0",
    ]


async def _refusals(address: str, token: str) -> list[str]:
    """The INVALID_ARGUMENT messages of reports with a bad hash, group size, reachability or link rate."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        joined = await stub.Join(pb.JoinRequest(join_token=token, peer_name="probe"), timeout=10)
        meta = (("authorization", f"Bearer {joined.session_token}"),)
        calls = [
            (stub.ReportOuterStep, pb.ReportOuterStepRequest(outer_step=1, params_sha256=bytes(31))),
            (stub.ReportOuterStep, pb.ReportOuterStepRequest(outer_step=1, params_sha256=A.encode())),
            (stub.ReportOuterStep, pb.ReportOuterStepRequest(outer_step=1, group_size=70_000)),
            (stub.ReportMetrics, pb.ReportMetricsRequest(outer_step=1, reachability="carrier-pigeon")),
            (stub.ReportMetrics, pb.ReportMetricsRequest(outer_step=1, uplink_bytes_per_s=float("nan"))),
            (stub.ReportMetrics, pb.ReportMetricsRequest(outer_step=1, downlink_bytes_per_s=-1.0)),
        ]
        messages = []
        for call, request in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request, metadata=meta, timeout=10)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            messages.append(info.value.details())
        return messages


def test_sessions_of_one_join_token_count_once_for_the_majority():
    state = initial_state(synthetic_plan([[4] * 8]), core_config(lease_timeout_s=100.0))
    for name, token in (("a", "t1"), ("b", "t2"), ("c", "t3"), ("d", "t3")):
        state, _ = core.apply(state, ev.PeerJoined(name, name, token_id=token), 0.0)
    for peer, sha in (("a", A), ("b", A), ("c", B)):
        state, _, _ = _report(state, peer, 1, sha, 4)
    state, compared, _ = _report(state, "d", 1, B, 4)  # per peer a tie; per token A holds 2 of 3
    assert (compared.majority, compared.resync) == (A, True)
    assert splits.step_majority(state.splits, state.peers, 1) == A
    assert splits.step_majority(state.splits, state.peers, 2) == ""

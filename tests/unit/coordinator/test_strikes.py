# SPDX-License-Identifier: AGPL-3.0-or-later
"""Accountability: rejections reported by part owners become strikes (enough witnesses per round), strikes
become a ban; the ledger, the status page, the metrics and the peer-side reporter."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import torch

from coordinator import actions as act
from coordinator import core
from coordinator import events as ev
from coordinator.auth import create_join_token
from coordinator.metrics import CoordinatorMetrics
from coordinator.plan import synthetic_plan
from coordinator.server import start_grpc_server
from coordinator.settings import ServerSettings
from coordinator.state import PeerState, StrikeTally, initial_state
from coordinator.status import RunInfo, build_snapshot
from coordinator.storage import Storage
from coordinator.web import render_page
from lila_net.aggregation import Rejection
from lila_net.dht.security import PeerIdentity
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from peer.accountability import StrikeReporter, strike_evidence
from peer.averaging.averager import RoundResult
from peer.averaging.matchmaking import Group
from tests.helpers.coordinator_service import core_config, in_process_service

IDS = {name: "Qm" + letter * 44 for name, letter in (("a", "a"), ("b", "b"), ("c", "c"), ("d", "d"))}


def _state(**config):
    state = initial_state(synthetic_plan([[4, 4, 4]]), core_config(lease_timeout_s=100.0, **config))
    for name in IDS:
        state, _ = core.apply(state, ev.PeerJoined(name, name), 0.0)
        state, _ = core.apply(state, ev.CredentialIssued(name, IDS[name]), 0.0)
    return state


def _report(state, reporter, round_index, *accused, reason="norm_ratio", ratio=100.0, now=1.0):
    evidence = tuple(ev.StrikeEvidence(IDS[a], reason, ratio, 0) for a in accused)
    return core.apply(state, ev.StrikeReported(reporter, round_index, evidence), now)


def _advance(state, step):
    """The run's outer step moved to ``step``, one step at a time (peers a, b and c, a majority of the four
    tokens, report each)."""
    for s in range(state.outer_step + 1, step + 1):
        for reporter in "abc":
            state, _ = core.apply(state, ev.OuterStepReported(reporter, s), float(s))
    assert state.outer_step == step
    return state


def _records(actions):
    return [a for a in actions if isinstance(a, act.StrikeRecorded)]


def test_a_round_counts_once_it_has_enough_witnesses():
    state = _state(strike_witnesses=2, strikes_to_ban=3)
    state, actions = _report(state, "a", 1, "d")
    (first,) = _records(actions)
    assert (first.accused, first.witnesses, first.struck, first.strikes) == ("d", 1, False, 0)
    state, actions = _report(state, "a", 1, "d")  # the same witness again: nothing new
    assert _records(actions)[0].witnesses == 1 and state.peers["d"].strikes == 0
    state, actions = _report(state, "b", 1, "d")
    assert (_records(actions)[0].witnesses, _records(actions)[0].struck) == (2, True)
    assert state.peers["d"].strikes == 1
    state, actions = _report(state, "c", 1, "d")  # a third witness of the same round adds no strike
    assert (_records(actions)[0].witnesses, _records(actions)[0].struck) == (3, False)
    assert state.peers["d"].strikes == 1


def test_strikes_to_ban_bans_returns_leases_and_refuses_every_call():
    state = _state(strike_witnesses=2, strikes_to_ban=3)
    state, actions = core.apply(state, ev.LeaseRequested("d"), 1.0)
    assert len(state.leases_of("d")) == 1
    for round_index in (1, 2, 3):
        state, _ = _report(state, "a", round_index, "d", reason="non_finite", ratio=None)
        state, actions = _report(state, "b", round_index, "d", reason="non_finite", ratio=None)
    record = _records(actions)[0]
    assert (record.strikes, record.banned) == (3, True)
    d = state.peers["d"]
    assert d.state is PeerState.BANNED and d.ban_reason == "3 strikes in rounds 1, 2, 3: non_finite"
    assert state.leases_of("d") == [] and len(state.returned) == 1
    for event in (ev.Heartbeat("d"), ev.LeaseRequested("d"), ev.CredentialIssued("d", IDS["d"])):
        _, actions = core.apply(state, event, 2.0)
        assert actions == [act.Rejected(act.RejectCode.BANNED, "peer d is banned (" + d.ban_reason + "); it may not take part")]
    _, actions = core.apply(state, ev.PeerJoined("d", "d"), 2.0)
    assert actions[0].code is act.RejectCode.BANNED


def test_strikes_far_apart_never_add_up_to_a_ban():
    memory = 10
    state = _state(strike_witnesses=1, strikes_to_ban=3, strike_memory_rounds=memory)
    for round_index in (1, 11, 21, 31):  # one false alarm every `memory` rounds
        state = _advance(state, round_index)
        state, _ = _report(state, "a", round_index, "c", reason="misaligned", ratio=1.0)
    c = state.peers["c"]
    assert (c.state, c.strikes, c.strike_rounds) == (PeerState.JOINING, 4, (31,))
    for round_index in (32, 35):  # two more soon after: three within the memory
        state, _ = _report(state, "a", round_index, "c", reason="misaligned", ratio=1.0)
    c = state.peers["c"]
    assert c.state is PeerState.BANNED and c.ban_reason == "3 strikes in rounds 31, 32, 35: misaligned, norm ratio 1"


def test_lone_liar_self_reports_unknown_ids_and_far_rounds_do_nothing():
    state = _state(strike_witnesses=2, strikes_to_ban=1)
    for round_index in range(1, 6):  # one peer accusing everybody, every round
        state, _ = _report(state, "d", round_index, "a", "b", "c")
    assert all(state.peers[p].strikes == 0 and state.peers[p].state is not PeerState.BANNED for p in "abc")
    state, actions = _report(state, "a", 1, "a")
    assert _records(actions)[0].accused == ""  # self-report ignored
    unknown = ev.StrikeEvidence("Qm" + "z" * 44, "norm_ratio", 5.0, 0)
    _, actions = core.apply(state, ev.StrikeReported("a", 1, (unknown,)), 1.0)
    assert _records(actions)[0].accused == ""
    _, actions = _report(state, "a", core.STRIKE_WINDOW_ROUNDS + 1, "d")
    assert actions[0].code is act.RejectCode.BAD_VALUE and "rounds away" in actions[0].message
    # old tallies are dropped as the run moves on
    state = _advance(state, 2 * core.STRIKE_WINDOW_ROUNDS)
    state, _ = _report(state, "a", 2 * core.STRIKE_WINDOW_ROUNDS, "d")
    assert all(key[1] >= core.STRIKE_WINDOW_ROUNDS for key in state.strike_reports)


def test_identities_are_per_peer_and_bounded():
    state = _state()
    _, actions = core.apply(state, ev.CredentialIssued("a", IDS["b"]), 1.0)
    assert actions[0].code is act.RejectCode.BAD_VALUE and "belongs to another peer" in actions[0].message
    for i in range(core.MAX_IDENTITIES_PER_PEER + 2):
        state, _ = core.apply(state, ev.CredentialIssued("a", f"Qm{i}" + "x" * 44), 1.0)
    assert state.peers["a"].libp2p_ids == tuple(
        f"Qm{i}" + "x" * 44 for i in range(2, core.MAX_IDENTITIES_PER_PEER + 2)
    )


def test_ledger_and_ban_survive_a_restart(tmp_path):
    config = core_config(lease_timeout_s=100.0, strike_witnesses=1, strikes_to_ban=2)
    plan = synthetic_plan([[4, 4]])
    storage = Storage(tmp_path / "run.db")
    state = storage.load(plan, config)
    events = [ev.PeerJoined("a", "a"), ev.PeerJoined("d", "d"), ev.CredentialIssued("d", IDS["d"])]
    events += [ev.StrikeReported("a", r, (ev.StrikeEvidence(IDS["d"], "misaligned", 1.0, 2),)) for r in (1, 2)]
    for now, event in enumerate(events):
        new, actions = core.apply(state, event, float(now))
        storage.commit(state, new, actions)
        state = new
    rows = storage.strike_ledger(accused="d")
    assert [(r.reporter, r.round_index, r.part, r.reason, r.norm_ratio, r.witnesses, r.struck) for r in rows] == [
        ("a", 1, 2, "misaligned", 1.0, 1, True),
        ("a", 2, 2, "misaligned", 1.0, 1, True),
    ]
    storage.close()
    reloaded = Storage(tmp_path / "run.db").load(plan, config)
    d = reloaded.peers["d"]
    assert (d.state, d.strikes, d.libp2p_ids) == (PeerState.BANNED, 2, (IDS["d"],))


def test_status_page_and_metrics_show_strikes_and_bans():
    state = _state(strike_witnesses=1, strikes_to_ban=2)
    state, _ = _report(state, "a", 1, "c")
    for round_index in (1, 2):
        state, _ = _report(state, "a", round_index, "d", reason="non_finite", ratio=None)
    snap = build_snapshot(state, [], run=RunInfo("r", "debug"), now=5.0, tokens_per_s=0.0)
    assert snap["strikes_total"] == 3
    assert {p["name"]: p["strikes"] for p in snap["peers"]} == {"a": 0, "b": 0, "c": 1, "d": 2}
    assert snap["banned"] == [{"peer_id": "d", "name": "d", "reason": "2 strikes in rounds 1, 2: non_finite"}]
    page = render_page(snap)
    assert "2 strikes in rounds 1, 2: non_finite" in page and "<th>strikes</th>" in page
    metrics = CoordinatorMetrics()
    metrics.set_snapshot(snap)
    metrics.observe_strikes(reports=4, strikes=3)
    text = metrics.render().decode()
    for line in (
        "lila_peers_banned 1.0",
        "lila_peer_strikes 3.0",
        "lila_strike_reports_total 4.0",
        "lila_strikes_total 3.0",
        'lila_peers{state="banned"} 1.0',
    ):
        assert line in text


class _Service:
    """A coordinator service on a real gRPC port, in this process."""

    def __init__(self, tmp_path, **settings):
        self.storage = Storage(tmp_path / "run.db")
        self.settings = ServerSettings.of(**settings)
        built = in_process_service(self.storage, self.settings, run="r")
        self.engine, self.token, self.service = built.engine, built.token, built.service
        self.tokens = {}  # one join token per peer name: witnesses count join tokens

    async def __aenter__(self):
        await self.engine.start()
        self.server, port = await start_grpc_server(self.service, host="127.0.0.1", port=0)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()
        await self.server.stop(None)
        await self.engine.stop()
        self.storage.close()

    async def join(self, name):
        token = self.tokens.get(name) or create_join_token(self.storage, label=name, now=time.time())[1]
        self.tokens[name] = token
        joined = await self.stub.Join(pb.JoinRequest(join_token=token, peer_name=name), timeout=10)
        return joined, (("authorization", f"Bearer {joined.session_token}"),)


def test_report_strike_over_grpc_bans_and_the_banned_peer_gets_permission_denied(tmp_path):
    identities = [PeerIdentity.generate() for _ in range(3)]

    async def scenario():
        async with _Service(tmp_path, strike_witnesses=2, strikes_to_ban=1) as svc:
            sessions = []
            for name, identity in zip("abd", identities, strict=True):
                joined, meta = await svc.join(name)
                assert list(joined.authority_public_keys) == [svc.service.authority.public_key]
                issued = await svc.stub.IssueCredential(
                    pb.IssueCredentialRequest(libp2p_peer_id=identity.peer_id, public_key=identity.public_key),
                    metadata=meta,
                    timeout=10,
                )
                assert issued.credential.startswith("lila-cred-v1.") and list(issued.revoked_libp2p_ids) == []
                sessions.append(meta)
            accused = identities[2].peer_id
            request = pb.ReportStrikeRequest(
                round=0,
                group_id="0123456789abcdef",
                evidence=[pb.StrikeEvidence(libp2p_peer_id=accused, reason="norm_ratio", norm_ratio=98.5, part=1)],
            )
            first = await svc.stub.ReportStrike(request, metadata=sessions[0], timeout=10)
            second = await svc.stub.ReportStrike(request, metadata=sessions[1], timeout=10)
            outcomes = [(o.known, o.witnesses, o.struck, o.strikes, o.banned) for o in (*first.outcomes, *second.outcomes)]
            beat = await svc.stub.Heartbeat(pb.HeartbeatRequest(), metadata=sessions[0], timeout=10)
            errors = []
            for call, req in (
                (svc.stub.Heartbeat, pb.HeartbeatRequest()),
                (svc.stub.LeaseShard, pb.LeaseShardRequest()),
                (svc.stub.IssueCredential, pb.IssueCredentialRequest(
                    libp2p_peer_id=identities[2].peer_id, public_key=identities[2].public_key)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(req, metadata=sessions[2], timeout=10)
                errors.append((info.value.code(), info.value.details()))
            bad = pb.ReportStrikeRequest(round=0, evidence=[pb.StrikeEvidence(libp2p_peer_id=accused, reason="vibes")])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await svc.stub.ReportStrike(bad, metadata=sessions[0], timeout=10)
            return outcomes, list(beat.revoked_libp2p_ids), errors, info.value, svc.storage.strike_ledger()

    outcomes, revoked, errors, bad, ledger = asyncio.run(scenario())
    assert outcomes == [(True, 1, False, 0, False), (True, 2, True, 1, True)]
    assert revoked == [identities[2].peer_id]
    reason = "1 strike in round 0: norm_ratio, norm ratio 98.5"
    for code, details in errors:
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert details == f"peer {ledger[0].accused} is banned ({reason}); it may not take part"
    assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT and "evidence[0].reason='vibes'" in bad.details()
    assert [(r.witnesses, r.struck) for r in ledger] == [(1, False), (2, True)]


def _round(me: str, rejections: list[tuple[int, Rejection]]) -> RoundResult:
    members = tuple(sorted(IDS.values()))
    group = Group(3, "0" * 16, members[0], members, members)
    return RoundResult(3, "ok", "", group, torch.zeros(4), rejections=rejections)


def test_reporter_sends_only_what_this_peer_witnessed():
    me = IDS["a"]  # owns part 0 (smallest id)
    rejections = [
        (0, Rejection(IDS["d"], "norm_ratio", 42.0)),
        (0, Rejection(IDS["c"], "non_finite", None)),
        (1, Rejection(IDS["d"], "norm_ratio", 40.0)),  # another owner's part: that owner reports it
        (0, Rejection(me, "norm_ratio", 3.0)),
    ]
    assert [(p, r.peer_id) for p, r in strike_evidence(_round(me, rejections), me)] == [
        (0, IDS["d"]),
        (0, IDS["c"]),
    ]
    sent = []

    def report(request):
        sent.append(request)
        return pb.ReportStrikeResponse()

    reporter = StrikeReporter(report=report, me=me)
    reporter.report_round(_round(me, rejections))
    assert reporter.report_round(_round(me, [])) is None
    (request,) = sent
    assert (request.round, request.group_id) == (3, "0" * 16)
    assert [(e.libp2p_peer_id, e.reason, e.HasField("norm_ratio"), e.part) for e in request.evidence] == [
        (IDS["d"], "norm_ratio", True, 0),
        (IDS["c"], "non_finite", False, 0),
    ]
    assert request.evidence[0].norm_ratio == 42.0
    assert reporter.rejections_seen == {IDS["d"]: 1, IDS["c"]: 1}

    def failing(request):
        raise ConnectionError("coordinator away")

    quiet = StrikeReporter(report=failing, me=me)
    assert quiet.report_round(_round(me, rejections)) is None and quiet.reports_failed == 1


def test_witnesses_count_per_token_and_a_group_account_takes_back_a_framing_strike():
    state = initial_state(synthetic_plan([[4, 4, 4]]), core_config(lease_timeout_s=100.0, strike_witnesses=2))
    for name, token in (("a", "t1"), ("b", "t2"), ("c", "t3"), ("d", "t3")):
        state, _ = core.apply(state, ev.PeerJoined(name, name, token_id=token), 0.0)
        state, _ = core.apply(state, ev.CredentialIssued(name, IDS[name]), 0.0)
    state, _ = _report(state, "c", 1, "a")
    state, actions = _report(state, "d", 1, "a")  # c and d share a join token: one witness
    assert (_records(actions)[0].witnesses, _records(actions)[0].struck) == (1, False)
    state, actions = _report(state, "b", 1, "a")
    assert (_records(actions)[0].witnesses, _records(actions)[0].struck) == (2, True)
    assert (state.peers["a"].strikes, state.peers["a"].strike_rounds) == (1, (1,))
    group = frozenset({IDS["a"], IDS["b"]})  # a averaged with b only: c and d framed it
    state, actions = core.apply(state, ev.OuterStepReported("a", 1, group_size=2, group=group), 2.0)
    assert [a for a in actions if isinstance(a, act.StrikeWithdrawn)] == [act.StrikeWithdrawn("a", 1, "a")]
    assert (state.peers["a"].strikes, state.peers["a"].strike_rounds) == (0, ())
    assert state.strike_reports[("a", 1)] == StrikeTally(frozenset({"b"}), counted=False)
    state, actions = _report(state, "c", 1, "a")  # named outside the group: no evidence
    assert (_records(actions)[0].witnesses, _records(actions)[0].struck) == (1, False)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Attacks on the coordinator by a peer holding valid join tokens, each made with crafted gRPC calls against
the real service (engine, SQLite ledger, gRPC server on a local port), and what stops it: credit bounded by
the shard, the outer step moving one step at a time by a quorum of join tokens, a bounded number of sessions
per token, bans of the token, strike witnesses counted per token and tied to the round's group, session
resumes bound to their token and age, and a bounded metrics ledger."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from coordinator.auth import SessionSigner, create_join_token
from coordinator.settings import ServerSettings
from coordinator.storage import Storage
from lila_net.claims import FALSE_CLAIM_MARGIN
from lila_net.credentials import CredentialVerifier
from lila_net.dht.keys import run_dht_id, state_key
from lila_net.dht.records import wrap
from lila_net.dht.security import CredentialFile, DhtRecordValidator, PeerIdentity
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from tests.helpers.coordinator_service import SESSION_TTL_S, in_process_service

pytestmark = pytest.mark.timeout(120)

RUN = "attacks"
HUGE = 2**62  # the largest count a request may carry
DOCS_PER_SHARD = 4  # the in-process service's synthetic plan: 3 shards of 4 documents
MAX_TOKENS_PER_DOC = ServerSettings().coordinator.max_tokens_per_doc


class Peer:
    """One session over a shared channel: its join token, session metadata, peer id and report sequence."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, token: str) -> None:
        self.stub, self.token = stub, token
        self.peer_id, self.session, self.seq = "", "", 0
        self.identity: PeerIdentity | None = None
        self.issued: pb.IssueCredentialResponse | None = None

    async def join(self, name: str, **fields: Any) -> pb.JoinResponse:
        joined = await self.stub.Join(pb.JoinRequest(join_token=self.token, peer_name=name, **fields), timeout=10)
        self.peer_id, self.session, self.seq = joined.peer_id, joined.session_token, joined.last_report_seq
        return joined

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.session}"),)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.md, timeout=10)

    async def credential(self, identity: PeerIdentity) -> None:
        self.identity = identity
        self.issued = await self.call("IssueCredential", pb.IssueCredentialRequest(libp2p_peer_id=identity.peer_id,
                                                                                   public_key=identity.public_key))

    async def progress(self, method: str, lease_id: str, docs: int, tokens: int) -> Any:
        self.seq += 1
        request = {"ReportProgress": pb.ReportProgressRequest, "CompleteShard": pb.CompleteShardRequest}[method]
        position = pb.ResumePosition(docs_consumed=docs, tokens_consumed=tokens)
        return await self.call(method, request(lease_id=lease_id, report_seq=self.seq, position=position))

    async def outer_step(self, step: int, sha: bytes = b"", group: tuple[PeerIdentity, ...] = ()) -> Any:
        request = pb.ReportOuterStepRequest(outer_step=step, params_sha256=sha, group_size=len(group))
        if group:
            request.group_libp2p_ids.extend(member.peer_id for member in group)
        return await self.call("ReportOuterStep", request)

    async def strike(self, round_index: int, accused: PeerIdentity) -> pb.StrikeOutcome:
        evidence = pb.StrikeEvidence(libp2p_peer_id=accused.peer_id, reason="norm_ratio", norm_ratio=50.0, part=0)
        answer = await self.call("ReportStrike", pb.ReportStrikeRequest(round=round_index, group_id="0" * 16,
                                                                         evidence=[evidence]))
        return answer.outcomes[0]


async def _refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


def _attack(tmp_path, scenario: Callable[..., Awaitable[Any]], storage: Storage | None = None, **settings) -> Any:
    """Run ``scenario(stub, new_token, built)`` against a served coordinator; ``new_token()`` makes a join token."""
    storage = storage or Storage(tmp_path / "run.db")
    built = in_process_service(storage, ServerSettings.of(**settings), run=RUN)

    def new_token() -> str:
        return create_join_token(storage, label="extra", now=time.time())[1]

    async def main() -> Any:
        async with built.serving() as address, grpc.aio.insecure_channel(address) as channel:
            return await scenario(pb_grpc.CoordinatorStub(channel), new_token, built)

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------- finding 3


def test_progress_beyond_the_shard_is_refused_and_no_counter_overflows(tmp_path) -> None:
    async def scenario(stub, new_token, built):
        mallory = Peer(stub, built.token)
        await mallory.join("mallory")
        lease = (await mallory.call("LeaseShard", pb.LeaseShardRequest())).lease
        refusals = [
            await _refused(mallory.progress("ReportProgress", lease.lease_id, 0, HUGE)),
            await _refused(mallory.progress("CompleteShard", lease.lease_id, DOCS_PER_SHARD, HUGE)),
            await _refused(mallory.progress("ReportProgress", lease.lease_id, 1, 2 * MAX_TOKENS_PER_DOC + 1)),
        ]
        accepted = await mallory.progress("ReportProgress", lease.lease_id, 1, 2 * MAX_TOKENS_PER_DOC)
        await mallory.call("ReportMetrics", pb.ReportMetricsRequest(outer_step=0, loss=1.0, tokens_per_s=1.0))
        status = await mallory.call("GetStatus", pb.GetStatusRequest())
        return refusals, accepted.credited_tokens, status.global_tokens, status.stage_index

    refusals, credited, global_tokens, stage = _attack(tmp_path, scenario)
    assert [code for code, _ in refusals] == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert refusals[0][1].startswith(f"position.tokens_consumed={HUGE} exceeds {MAX_TOKENS_PER_DOC} tokens")
    assert f"exceeds {DOCS_PER_SHARD * MAX_TOKENS_PER_DOC} tokens" in refusals[1][1]
    assert "coordinator.max_tokens_per_doc" in refusals[2][1]
    assert (credited, global_tokens, stage) == (2 * MAX_TOKENS_PER_DOC, 2 * MAX_TOKENS_PER_DOC, 0)


# ---------------------------------------------------------------------------------------------- finding 4


def test_the_outer_step_moves_one_step_at_a_time_and_strikes_stay_possible(tmp_path) -> None:
    async def scenario(stub, new_token, built):
        mallory = Peer(stub, built.token)
        await mallory.join("mallory")
        jump = await _refused(mallory.outer_step(HUGE))
        skip = await _refused(mallory.outer_step(2))
        one = await mallory.outer_step(1)
        strike = await mallory.call("ReportStrike", pb.ReportStrikeRequest(round=1, group_id="0" * 16))
        return jump, skip, one.current_outer_step, strike

    jump, skip, step, strike = _attack(tmp_path, scenario)
    assert jump[0] is skip[0] is grpc.StatusCode.FAILED_PRECONDITION
    assert jump[1] == (f"outer_step={HUGE} is more than one step ahead of the run's outer step 0: download the "
                       "run's state of step 0 first, then report each step you finish")
    assert step == 1 and list(strike.outcomes) == []


def test_the_quorum_counts_distinct_live_join_tokens(tmp_path) -> None:
    async def scenario(stub, new_token, built):
        mallory = [Peer(stub, built.token), Peer(stub, built.token)]  # two sessions of one token
        for i, session in enumerate(mallory):
            await session.join(f"mallory-{i}")
        steps = [(await session.outer_step(1)).current_outer_step for session in mallory]
        alice = Peer(stub, new_token())
        await alice.join("alice")
        steps.append((await alice.outer_step(1)).current_outer_step)  # a second token: quorum of 2
        steps.append((await alice.outer_step(2)).current_outer_step)
        await alice.call("Leave", pb.LeaveRequest(reason="done"))  # a departed peer's step 2 no longer counts
        steps.append((await mallory[0].outer_step(2)).current_outer_step)
        steps.append((await mallory[1].outer_step(2)).current_outer_step)
        return steps

    assert _attack(tmp_path, scenario, outer_step_quorum=2) == [0, 0, 1, 1, 1, 1]


def test_one_token_cannot_move_the_run_others_train_in_even_with_the_default_quorum_of_one(tmp_path) -> None:
    async def scenario(stub, new_token, built):
        alice, mallory = Peer(stub, built.token), Peer(stub, new_token())
        await alice.join("alice")
        await alice.call("Heartbeat", pb.HeartbeatRequest(phase="training"))  # joined, has not finished a round
        await mallory.join("mallory")
        steps = [(await mallory.outer_step(1)).current_outer_step]  # alone: not a majority of two tokens
        steps.append((await _refused(mallory.outer_step(2)))[0])  # and it cannot run ahead of the run's step
        steps.append((await alice.outer_step(1)).current_outer_step)  # both reached 1
        await alice.call("Heartbeat", pb.HeartbeatRequest(phase="idle"))  # the run's data is done for alice
        steps.append((await mallory.outer_step(2)).current_outer_step)  # alice reached step 1: still counts
        return steps

    assert _attack(tmp_path, scenario) == [0, grpc.StatusCode.FAILED_PRECONDITION, 1, 1]


def test_join_and_heartbeat_name_the_majority_hash_counted_per_token(tmp_path) -> None:
    good, bad = hashlib.sha256(b"good").digest(), hashlib.sha256(b"bad").digest()

    async def scenario(stub, new_token, built):
        before = await Peer(stub, new_token()).join("early")
        alice, bob = Peer(stub, built.token), Peer(stub, new_token())
        mallory = [Peer(stub, new_token())]
        mallory.append(Peer(stub, mallory[0].token))
        for i, peer in enumerate((alice, bob, *mallory)):
            await peer.join(f"peer-{i}")
        for peer, sha in ((alice, good), (bob, good), (mallory[0], bad), (mallory[1], bad)):
            await peer.outer_step(1, sha)  # per peer a tie (2 : 2), per token a majority (2 : 1)
        beat = await alice.call("Heartbeat", pb.HeartbeatRequest())
        joined = await Peer(stub, new_token()).join("late")
        return before.outer_step_sha256, beat.outer_step_sha256, beat.current_outer_step, joined.outer_step_sha256

    assert _attack(tmp_path, scenario) == ("", good.hex(), 1, good.hex())


# ---------------------------------------------------------------------------------------------- finding 5


def test_a_join_token_holds_a_bounded_number_of_live_sessions(tmp_path) -> None:
    async def scenario(stub, new_token, built):
        sessions = [Peer(stub, built.token) for _ in range(3)]
        await sessions[0].join("mallory-0")
        await sessions[1].join("mallory-1")
        refused = await _refused(sessions[2].join("mallory-2"))
        await sessions[0].call("Leave", pb.LeaveRequest(reason="make room"))
        await sessions[2].join("mallory-2")
        return refused, sessions[2].peer_id

    (code, details), third = _attack(tmp_path, scenario)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has 2 live sessions" in details and "coordinator.max_sessions_per_token=2" in details
    assert third.startswith("p-")


def test_sessions_of_one_token_are_one_witness_and_a_ban_bans_the_token(tmp_path) -> None:
    ids = [PeerIdentity.generate() for _ in range(5)]

    async def scenario(stub, new_token, built):
        honest = Peer(stub, built.token)
        sybils = [Peer(stub, new_token())]
        sybils.append(Peer(stub, sybils[0].token))
        witnesses = [Peer(stub, new_token()), Peer(stub, new_token())]
        for i, peer in enumerate((honest, *sybils, *witnesses)):
            await peer.join(f"peer-{i}")
            await peer.credential(ids[i])
        framed = [await sybil.strike(0, ids[0]) for sybil in sybils]  # one token: one witness
        framed_state = (await honest.call("Heartbeat", pb.HeartbeatRequest())).state
        struck = [await witness.strike(0, ids[1]) for witness in witnesses]  # two tokens: banned (1 strike)
        rejoin = await _refused(Peer(stub, sybils[0].token).join("sybil-again"))
        sibling = await _refused(sybils[1].call("Heartbeat", pb.HeartbeatRequest()))
        return framed, framed_state, struck, rejoin, sibling

    framed, framed_state, struck, rejoin, sibling = _attack(tmp_path, scenario, strike_witnesses=2,
                                                             strikes_to_ban=1)
    assert [(o.known, o.witnesses, o.struck) for o in framed] == [(True, 1, False), (True, 1, False)]
    assert framed_state == pb.PEER_STATE_JOINING
    assert [(o.witnesses, o.struck, o.banned) for o in struck] == [(1, False, False), (2, True, True)]
    assert rejoin[0] is grpc.StatusCode.PERMISSION_DENIED and "is banned" in rejoin[1]
    assert "may not join again" in rejoin[1]
    assert sibling[0] is grpc.StatusCode.PERMISSION_DENIED and "same join token as" in sibling[1]


def test_strikes_from_peers_outside_the_accused_group_are_taken_back(tmp_path) -> None:
    ids = [PeerIdentity.generate() for _ in range(4)]

    async def scenario(stub, new_token, built):
        honest, friend = Peer(stub, built.token), Peer(stub, new_token())
        framers = [Peer(stub, new_token()), Peer(stub, new_token())]  # two tokens: two witnesses
        for i, peer in enumerate((honest, friend, *framers)):
            await peer.join(f"peer-{i}")
            await peer.credential(ids[i])
        outcomes = []
        for round_index in (1, 2, 3):  # strikes come right after a round, the outer step report after them
            outcomes += [await framer.strike(round_index, ids[0]) for framer in framers]
            await honest.outer_step(round_index, group=(ids[0], ids[1]))
            await friend.outer_step(round_index, group=(ids[0], ids[1]))
            for framer in framers:  # the framers train too (their own group): the run's step moves on
                await framer.outer_step(round_index, group=(ids[2], ids[3]))
        after = await framers[0].strike(3, ids[0])  # once the group is known, evidence from outside is refused
        beat = await honest.call("Heartbeat", pb.HeartbeatRequest())
        return outcomes, after, beat.state

    outcomes, after, state = _attack(tmp_path, scenario, strike_witnesses=2, strikes_to_ban=3)
    # each round's strike counts at first, and is taken back when the accused names its group
    assert [(o.witnesses, o.struck, o.strikes) for o in outcomes] == [(1, False, 0), (2, True, 1)] * 3
    assert (after.witnesses, after.struck, after.strikes, after.banned) == (0, False, 0, False)
    assert state == pb.PEER_STATE_JOINING


# ---------------------------------------------------------------------------------------------- finding 9


def test_revoking_a_join_token_revokes_its_peers_averaging_credentials(tmp_path) -> None:
    mallory_id, alice_id = PeerIdentity.generate(), PeerIdentity.generate()

    async def scenario(stub, new_token, built):
        mallory, alice = Peer(stub, new_token()), Peer(stub, built.token)
        await mallory.join("mallory")
        await alice.join("alice")
        await mallory.credential(mallory_id)
        await alice.credential(alice_id)
        before = list((await alice.call("Heartbeat", pb.HeartbeatRequest(phase="training"))).revoked_libp2p_ids)
        leaked = [row.token_id for row in built.storage.join_tokens() if row.label == "extra"]
        built.storage.revoke_join_token(leaked[0], at=time.time())
        built.service.revoked_token_ids = built.storage.revoked_token_ids()  # what the app's refresh loop does
        after = list((await alice.call("Heartbeat", pb.HeartbeatRequest(phase="training"))).revoked_libp2p_ids)
        refused = await _refused(mallory.call("Heartbeat", pb.HeartbeatRequest(phase="training")))
        return before, after, refused

    before, after, refused = _attack(tmp_path, scenario)
    assert (before, after) == ([], [mallory_id.peer_id])
    assert refused[0] is grpc.StatusCode.UNAUTHENTICATED and "was revoked" in refused[1]


# ---------------------------------------------------------------------------------------------- finding 10


def test_a_session_resumes_only_with_its_own_join_token_and_not_too_long_after_it_expired(tmp_path) -> None:
    async def scenario(stub, new_token, built):
        alice = Peer(stub, built.token)
        await alice.join("alice")
        mallory = Peer(stub, new_token())
        stolen = await _refused(mallory.join("mallory", previous_session_token=alice.session))
        row = built.storage.join_tokens()[0]
        signer = SessionSigner(built.storage.secret(), ttl_s=SESSION_TTL_S)
        now = time.time()
        ancient = signer.issue(alice.peer_id, row.token_id, now=now - 2.5 * SESSION_TTL_S)
        too_old = await _refused(Peer(stub, built.token).join("alice", previous_session_token=ancient))
        await alice.call("Leave", pb.LeaveRequest(reason="restart"))
        recent = signer.issue(alice.peer_id, row.token_id, now=now - 1.5 * SESSION_TTL_S)
        resumed = await Peer(stub, built.token).join("alice", previous_session_token=recent)
        return stolen, too_old, resumed.peer_id == alice.peer_id

    stolen, too_old, resumed = _attack(tmp_path, scenario)
    assert stolen[0] is too_old[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert "the session was made with another join token" in stolen[1]
    assert f"expired more than {SESSION_TTL_S:g} s ago" in too_old[1]
    assert resumed


# ---------------------------------------------------------------------------------------------- finding 11


def test_the_metrics_ledger_keeps_only_the_last_rows_per_peer(tmp_path) -> None:
    kept = 3

    async def scenario(stub, new_token, built):
        peers = [Peer(stub, built.token), Peer(stub, new_token())]
        for i, peer in enumerate(peers):
            await peer.join(f"peer-{i}")
            for step in range(10):
                await peer.call("ReportMetrics", pb.ReportMetricsRequest(outer_step=step, loss=1.0, tokens_per_s=1.0))
        return [peer.peer_id for peer in peers]

    storage = Storage(tmp_path / "run.db", metrics_rows_per_peer=kept)
    peer_ids = _attack(tmp_path, scenario, storage=storage)
    db = sqlite3.connect(tmp_path / "run.db")
    rows = db.execute("SELECT peer_id, outer_step FROM metrics ORDER BY id").fetchall()
    db.close()
    assert rows == [(peer_ids[0], s) for s in (7, 8, 9)] + [(peer_ids[1], s) for s in (7, 8, 9)]


# ---------------------------------------------------------------------------------------------- finding 1


def _signed_state(peer: Peer, step: int, directory, *, key: str | None = None) -> pb.ReportClaimRequest:
    """The state record ``peer`` would store in the DHT announcing ``step``, signed as the DHT signs it."""
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils import MSGPackSerializer, get_dht_time

    assert peer.identity is not None and peer.issued is not None
    credentials = CredentialFile(directory / f"{peer.identity.peer_id[-8:]}.json")
    credentials.write(peer.issued.credential)
    verifier = CredentialVerifier(list(peer.issued.authority_public_keys), run=RUN)
    validator = DhtRecordValidator(identity=peer.identity, credentials=credentials, verifier=verifier)
    key = key or state_key(run_dht_id(RUN))
    expiration = get_dht_time() + 60
    value = MSGPackSerializer.dumps(wrap(key, json.dumps({"outer_step": step}).encode()))
    record = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(peer.identity.peer_id),
                       value, expiration)
    return pb.ReportClaimRequest(key=key, writer=peer.identity.peer_id, envelope=validator.sign_value(record),
                                 expiration=expiration)


def test_a_signed_claim_of_a_far_future_step_bans_its_writer_on_one_report(tmp_path) -> None:
    ids = {name: PeerIdentity.generate() for name in ("mallory", "alice", "bob")}

    async def scenario(stub, new_token, built):
        mallory, alice, bob = Peer(stub, new_token()), Peer(stub, built.token), Peer(stub, new_token())
        for name, peer in (("mallory", mallory), ("alice", alice), ("bob", bob)):
            await peer.join(name)
            await peer.credential(ids[name])
        near = await alice.call("ReportClaim", _signed_state(bob, FALSE_CLAIM_MARGIN, tmp_path))
        hijack = _signed_state(mallory, 10**15, tmp_path)
        tampered = pb.ReportClaimRequest()
        tampered.CopyFrom(hijack)
        tampered.envelope = hijack.envelope.replace(b"1000000000000000", b"9000000000000000")
        forged = await _refused(alice.call("ReportClaim", tampered))
        not_state = await _refused(alice.call("ReportClaim", _signed_state(
            mallory, 10**15, tmp_path, key=f"lila/{run_dht_id(RUN)}/absent")))
        mallory_alone = await mallory.call("ReportClaim", _signed_state(mallory, 10**15, tmp_path))
        banned = await alice.call("ReportClaim", hijack)
        again = await bob.call("ReportClaim", hijack)
        refused = await _refused(mallory.call("Heartbeat", pb.HeartbeatRequest(phase="training")))
        revoked = list((await alice.call("Heartbeat", pb.HeartbeatRequest(phase="training"))).revoked_libp2p_ids)
        return near, forged, not_state, mallory_alone, banned, again, refused, revoked


    near, forged, not_state, mallory_alone, banned, again, refused, revoked = _attack(tmp_path, scenario)
    db = sqlite3.connect(tmp_path / "run.db")
    states = dict(db.execute("SELECT name, state FROM peers"))
    db.close()
    assert (near.banned, near.claimed_step) == (False, FALSE_CLAIM_MARGIN) and "not a false claim" in near.detail
    assert forged[0] is grpc.StatusCode.INVALID_ARGUMENT and "signature is invalid" in forged[1]
    assert not_state[0] is grpc.StatusCode.INVALID_ARGUMENT and "not this run's state key" in not_state[1]
    assert not mallory_alone.banned and "shares the reporter's join token" in mallory_alone.detail
    assert (banned.banned, banned.claimed_step) == (True, 10**15) and "announced outer step" in banned.detail
    assert again.banned and again.detail.startswith("already banned")
    assert refused[0] is grpc.StatusCode.PERMISSION_DENIED and "banned" in refused[1]
    assert revoked == [ids["mallory"].peer_id]
    assert states["mallory"] == "banned" and "banned" not in (states["alice"], states["bob"])

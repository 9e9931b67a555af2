# SPDX-License-Identifier: AGPL-3.0-or-later
"""Without a valid token or credential a peer cannot join the coordinator, the DHT, or an averaging group,
nor write the run's DHT keys; a ban closes all three. Credentials and tokens never reach the logs."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import hivemind
import pytest
import torch
from hivemind.utils import get_dht_time

from coordinator.auth import SessionSigner, create_join_token
from coordinator.settings import ServerSettings
from coordinator.storage import Storage
from lila_net.credentials import CredentialAuthority, CredentialVerifier
from lila_net.dht.node import start_dht
from lila_net.dht.security import DhtCredentialAuthorizer, PeerIdentity
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_run.harness import RawCodec
from peer.averaging import Averager, AveragingConfig, Transport, get_aggregator
from peer.averaging.auth import CredentialAuthorizer
from peer.averaging.trust import IssuedCredential, TrustSession
from tests.helpers.coordinator_service import AUTHORITY_SEED, in_process_service
from tests.helpers.transports import local_transports

pytestmark = pytest.mark.timeout(240)

RUN = "trust-auth"
RUN_ID = "trust-auth"
NUMEL = 600
STATE_KEY = f"lila/{RUN_ID}/state"
RECORD_LIFETIME_S = 60.0
RELOAD_WAIT_S = 2.5  # > RELOAD_INTERVAL_S of the DHT process's credential file
SCENARIO_TIMEOUT_S = 200.0
MAX_ATTEMPTS = 3
READ_PATIENCE_S = 10.0
CONFIG = AveragingConfig(
    matchmaking_time=1.5, join_timeout=1.5, request_timeout=1.0, part_timeout=3.0, result_timeout=3.0
)


# ---------------------------------------------------------------------------------------------- coordinator


def test_no_valid_token_cannot_join_the_coordinator(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> tuple[list[tuple[grpc.StatusCode, str]], str, str]:
        built = in_process_service(Storage(tmp_path / "run.db"), ServerSettings(), run=RUN)
        storage, good = built.storage, built.token
        now = time.time()
        revoked_id, revoked = create_join_token(storage, label="leaked", now=now)
        storage.revoke_join_token(revoked_id, at=now)
        expired = create_join_token(storage, label="old", now=now - 10, ttl_s=5)[1]
        identity = PeerIdentity.generate()
        issue = pb.IssueCredentialRequest(libp2p_peer_id=identity.peer_id, public_key=identity.public_key)
        errors = []
        async with built.serving() as address, grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            for token in ("", "not-a-token", "lila_jt_0000_secret", revoked, expired):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Join(pb.JoinRequest(join_token=token, peer_name="mallory"), timeout=10)
                errors.append((info.value.code(), info.value.details()))
            forged = SessionSigner(b"x" * 32, ttl_s=600.0).issue("p-mallory", "t", now=now)
            for metadata in ((), (("authorization", f"Bearer {forged}"),)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.IssueCredential(issue, metadata=metadata, timeout=10)
                errors.append((info.value.code(), info.value.details()))
            joined = await stub.Join(pb.JoinRequest(join_token=good, peer_name="alice"), timeout=10)
            meta = (("authorization", f"Bearer {joined.session_token}"),)
            issued = await stub.IssueCredential(issue, metadata=meta, timeout=10)
            return errors, issued.credential, good

    errors, credential, token = asyncio.run(scenario())
    assert [code for code, _ in errors] == [grpc.StatusCode.UNAUTHENTICATED] * 7
    assert "join_token is empty" in errors[0][1]
    assert "not a LILA join token" in errors[1][1]
    assert "not known to this run" in errors[2][1]
    assert "was revoked" in errors[3][1] and "expired" in errors[4][1]
    assert "no session token" in errors[5][1] and "not issued by this run" in errors[6][1]
    verifier = CredentialVerifier([CredentialAuthority(AUTHORITY_SEED, run=RUN).public_key], run=RUN)
    assert verifier.verify(credential, now=time.time()).peer.startswith("p-")
    assert credential not in caplog.text and token not in caplog.text


# ---------------------------------------------------------------------------------------------- DHT


def _fetcher(authority: CredentialAuthority, peer: str):
    def fetch(libp2p_id: str, public_key: bytes) -> IssuedCredential:
        token, claims = authority.issue(peer=peer, libp2p_id=libp2p_id, public_key=public_key, now=time.time())
        return IssuedCredential(token, claims.expires_at, (authority.public_key,), ())

    return fetch


def _store(transport: Transport, subkey: str, value: bytes, key: str = STATE_KEY) -> bool:
    expiration = transport.now() + RECORD_LIFETIME_S
    return transport.run(transport.dht_store(key, subkey, value, expiration), timeout=30)


def _read(transport: Transport, key: str = STATE_KEY) -> dict[str, bytes]:
    return transport.run(transport.dht_get_subkeys(key), timeout=30)


def _read_until(transport: Transport, expected: dict[str, bytes]) -> dict[str, bytes]:
    """Read until the records equal ``expected`` (a DHT on a busy machine can miss a fresh record once)."""
    deadline = time.monotonic() + READ_PATIENCE_S
    while True:
        got = _read(transport)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(RELOAD_WAIT_S / 5)


class _Logs(logging.Handler):
    """Collects every log message of the scenario (they must never contain a credential)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)

    @classmethod
    def install(cls) -> _Logs:
        handler = cls()
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger("hivemind").setLevel(logging.WARNING)
        return handler


def _run_isolated(procs, scenario: str) -> None:
    """Run ``scenario`` (a function of this module) in a fresh interpreter: hivemind forks its DHT process,
    and a fork after this test process has used gRPC (other tests do) can hang the child."""
    code = f"import runpy, sys; runpy.run_path({str(Path(__file__))!r})[{scenario!r}]()"
    proc = procs.spawn([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if "fork_posix" not in line]
    assert proc.returncode == 0, "\n".join(lines[-60:])


def test_dht_admits_only_credentialed_peers_and_their_own_signed_records(procs) -> None:
    _run_isolated(procs, "_dht_scenario")


def test_averaging_group_refuses_replayed_and_revoked_credentials(procs) -> None:
    _run_isolated(procs, "_averaging_scenario")


def _dht_scenario() -> None:
    logs = _Logs.install()
    authority = CredentialAuthority(bytes(range(32)), run=RUN)
    node = start_dht(host="127.0.0.1", authority=authority)
    sessions: list[TrustSession] = []
    transports: list[Transport] = []
    others: list[Any] = []
    try:
        for name in ("alice", "bob"):
            session = TrustSession(run_name=RUN, fetch=_fetcher(authority, name))
            sessions.append(session)
            transports.append(Transport.create(initial_peers=node.maddrs, **session.dht_options()))
        alice, bob = transports
        assert alice.peer_id == sessions[0].peer_id
        assert _store(alice, alice.peer_id, b'{"outer_step": 1}')
        assert _read_until(bob, {alice.peer_id: b'{"outer_step": 1}'}) == {alice.peer_id: b'{"outer_step": 1}'}

        # no credential at all: cannot bootstrap; forced past bootstrap, nothing it stores is kept
        with pytest.raises(RuntimeError, match="bootstrap failed"):
            others.append(hivemind.DHT(initial_peers=node.maddrs, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True))
        intruder = hivemind.DHT(
            initial_peers=node.maddrs, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
            ensure_bootstrap_success=False,
        )
        others.append(intruder)
        intruder_id = intruder.peer_id.to_base58()
        intruder.store(STATE_KEY, b"x", get_dht_time() + 30, subkey=intruder_id)  # kept in its own node at most
        seen = intruder.get(STATE_KEY, latest=True)
        assert seen is None or alice.peer_id not in seen.value  # it cannot read the run's records either
        assert intruder_id not in _read(bob)

        # alice's credential file, stolen by a peer with another key: refused (the token names alice's key)
        thief = PeerIdentity.generate()
        stolen = DhtCredentialAuthorizer(
            identity=thief, credentials=sessions[0].credentials, verifier=sessions[0].verifier
        )
        with pytest.raises(RuntimeError, match="bootstrap failed"):
            others.append(
                hivemind.DHT(
                    initial_peers=node.maddrs, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True, authorizer=stolen
                )
            )

        # an admitted peer: no record under another peer's name, outside the schema, or outside the run's keys
        assert not _store(alice, bob.peer_id, b'{"outer_step": 5}')
        assert not _store(alice, alice.peer_id, b'{"outer_step": "five"}')
        assert not _store(alice, alice.peer_id, b"anything", key="some/other/key")
        # an admitted peer that skips signing (a DHT with its credential but no record validator)
        raw_session = TrustSession(run_name=RUN, fetch=_fetcher(authority, "carol"))
        sessions.append(raw_session)
        raw_options = raw_session.dht_options()
        raw_options.pop("record_validators")
        raw = hivemind.DHT(initial_peers=node.maddrs, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True, **raw_options)
        others.append(raw)
        raw.store(STATE_KEY, b"unsigned", get_dht_time() + 30, subkey=raw_session.peer_id)
        only_alice = {alice.peer_id: b'{"outer_step": 1}'}
        assert _read_until(bob, only_alice) == only_alice  # none of the attempts above is visible

        # a ban: once the coordinator node and bob know it, alice can write nothing more
        node.refresh([alice.peer_id], now=time.time())
        sessions[1].revoke([alice.peer_id])
        time.sleep(RELOAD_WAIT_S)
        _store(alice, alice.peer_id, b'{"outer_step": 2}')  # at most into alice's own node
        assert _store(bob, bob.peer_id, b'{"outer_step": 2}')
        # bob still sees alice's record signed before the ban, but not her new one
        expected = {alice.peer_id: b'{"outer_step": 1}', bob.peer_id: b'{"outer_step": 2}'}
        assert _read_until(bob, expected) == expected
    finally:
        for dht in others:
            dht.shutdown()
        for transport in transports:
            transport.shutdown()
        node.shutdown()
        for session in sessions:
            session.close()
        gc.collect()
    for session in sessions:
        assert session.credential.decode() not in logs.text


# ---------------------------------------------------------------------------------------------- averaging


def _together(jobs: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda n=n, j=j: results.__setitem__(n, j())) for n, j in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _averaging_scenario() -> None:
    logs = _Logs.install()
    directory = Path(tempfile.mkdtemp(prefix="lila-trust-test-"))
    identities = [PeerIdentity.generate() for _ in range(3)]
    paths = [identity.write_identity_file(directory / f"id-{i}.key") for i, identity in enumerate(identities)]
    try:
        # three peers on an open DHT (so only the averaging layer's own check is under test)
        with local_transports(
            3, options=lambda i: {"identity_path": str(paths[i]), "check_if_identity_free": False}
        ) as transports:
            assert [t.peer_id for t in transports] == [i.peer_id for i in identities]
            _averaging_rounds(list(zip(identities, transports, strict=True)), logs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _averaging_rounds(open_dht_peers: list[tuple[PeerIdentity, Transport]], logs: _Logs) -> None:
    authority = CredentialAuthority(bytes(range(1, 33)), run=RUN)
    now = time.time()
    (a_id, a_t), (b_id, b_t), (_, c_t) = open_dht_peers
    credentials = {
        name: authority.issue(peer=name, libp2p_id=i.peer_id, public_key=i.public_key, now=now)[0]
        for name, i in (("a", a_id), ("b", b_id))
    }
    verifiers = {name: CredentialVerifier([authority.public_key], run=RUN) for name in "ab"}
    averagers = {
        name: Averager(
            t, run_id=RUN_ID, credential=credentials[name].encode(), authorize=CredentialAuthorizer(verifiers[name]),
            max_numel=NUMEL, config=CONFIG,
        )
        for name, t in (("a", a_t), ("b", b_t))
    }
    # the intruder replays a's credential (it saw it on a call) and accepts anyone
    averagers["c"] = Averager(
        c_t, run_id=RUN_ID, credential=credentials["a"].encode(), authorize=lambda *_: True, max_numel=NUMEL,
        config=CONFIG,
    )
    codec, mean = RawCodec(torch.float32), get_aggregator("mean")
    vectors = {n: torch.full((NUMEL,), float(i + 1)) for i, n in enumerate("abc")}
    try:
        honest = sorted([a_t.peer_id, b_t.peer_id])
        for round_index in range(1, MAX_ATTEMPTS + 1):  # a busy machine can split a round's group: retry
            results = _together(
                {n: (lambda n=n, r=round_index: averagers[n].average(r, vectors[n], codec=codec, aggregator=mean)) for n in "abc"}
            )
            for name in "ab":  # in no attempt did an honest peer take the intruder into its group
                assert results[name].group is None or c_t.peer_id not in results[name].group.members
            if all(results[n].ok and list(results[n].group.members) == honest for n in "ab"):
                break
        for name in "ab":
            assert results[name].status == "ok", results[name].reason
            assert list(results[name].group.members) == honest
            assert results[name].average.tolist() == [1.5] * NUMEL
        assert c_t.peer_id not in results["a"].group.members
        assert not results["c"].ok or list(results["c"].group.members) == [c_t.peer_id]
        assert "only valid for the identity it was issued to" in logs.text

        # b is banned: a refuses it from now on (b has not heard of it yet and still tries)
        verifiers["a"].set_revoked([b_t.peer_id])
        results = _together(
            {n: (lambda n=n: averagers[n].average(MAX_ATTEMPTS + 1, vectors[n], codec=codec, aggregator=mean)) for n in "ab"}
        )
        assert results["a"].group is None or b_t.peer_id not in results["a"].group.members
        assert not results["b"].ok or list(results["b"].group.members) == [b_t.peer_id]
        # a drops banned candidates before electing a leader; b, unaware, joins a only when a's id is the
        # smaller one (its leader), and a's authorizer then refuses it
        if a_t.peer_id < b_t.peer_id:
            assert "is banned from this run" in logs.text
    finally:
        for averager in averagers.values():
            averager.shutdown()
    for credential in credentials.values():
        assert credential not in logs.text

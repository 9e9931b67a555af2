# SPDX-License-Identifier: AGPL-3.0-or-later
"""Attacks of one admitted peer (a valid join token, so DHT records the validators accept) on the others,
with real hivemind DHT nodes in this process: it must not steer the run's step, block rounds, outvote a
group's hashes, or keep its say once banned or once its credential expired.

The DHT nodes here run without the record validator: the attacker writes only records that fit the run's
schema under its own id, which is what the validator lets a credentialed peer write (the sybils of the
verification test stand for peers holding several credentials)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import torch

from lila_net.credentials import CredentialAuthority, CredentialVerifier
from lila_net.dht.records import wrap
from lila_net.dht.security import CredentialFile, DhtRecordValidator, PeerIdentity
from lila_run.harness import RawCodec
from peer.averaging import (
    Averager,
    AveragingConfig,
    StateSnapshot,
    StateSync,
    StateSyncConfig,
    StaticTokenAuthorizer,
    Transport,
    get_aggregator,
)
from peer.averaging.auth import CredentialAuthorizer
from peer.averaging.verify import params_hash, publish_hash
from peer.network_view import NetworkView
from peer.round_sync import RoundSync
from tests.helpers.transports import local_transports

RUN_ID = "attack-test"
KEY = b"attack-key"
STRAGGLER_WAIT_S = 2.0
FAST_S = 1.5  # an answer that did not wait for the straggler timeout
CONFIG = AveragingConfig(
    matchmaking_time=1.5, join_timeout=1.5, request_timeout=1.0, part_timeout=3.0, result_timeout=3.0
)
NUMEL = 16

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def transports() -> Iterator[list[Transport]]:
    """honest a, honest b, attacker (in that order)."""
    with local_transports(3) as started:
        yield started


def _snapshot(step: int, params: torch.Tensor) -> StateSnapshot:
    return StateSnapshot(tensors={"global_params": params}, metadata={"outer_step": step,
                                                                      "params_sha256": params_hash([params])})


def _syncs(transports: list[Transport], run_id: str, authorize, view: NetworkView | None = None) -> list[RoundSync]:
    out = []
    for transport in transports:
        state = StateSync(transport, run_id=run_id, credential=KEY, authorize=authorize,
                          config=StateSyncConfig(announce_period=30.0))
        sync = RoundSync(transport, state, run_id=run_id, straggler_wait_s=STRAGGLER_WAIT_S)
        if view is not None:
            sync.view = view
        out.append(sync)
    return out


def test_a_donor_claiming_a_huge_outer_step_does_not_move_the_network(transports: list[Transport]) -> None:
    honest = torch.arange(4, dtype=torch.float32)
    view = NetworkView(step=3, sha256=params_hash([honest]))  # what the coordinator said at the last heartbeat
    a, b, attacker = _syncs(transports, f"{RUN_ID}-hijack", StaticTokenAuthorizer([KEY]), view)
    try:
        for sync in (a, b):
            sync.state_sync.publish(_snapshot(3, honest))
        attacker.state_sync.publish(_snapshot(10**15, torch.zeros(4)))
        b.post_ready(4)
        result = a.wait_for_peers(4)
        assert result.moved_on is None  # before: 10**15, and a dropped its work to chase the attacker
        assert result.expected == (b.me,) and result.missing == () and result.waited_s < FAST_S
        assert a.network_step(3) == 3 and [d.peer_id for d in a.donors(3)] == [b.me]
        # one round ahead of the coordinator is still believed (a round just finished elsewhere)
        b.state_sync.publish(_snapshot(4, honest + 1))
        assert a.wait_for_peers(4).moved_on == 4
    finally:
        for sync in (a, b, attacker):
            sync.state_sync.shutdown()


def test_squatted_group_records_do_not_lock_peers_out_of_rounds(transports: list[Transport]) -> None:
    a_t, b_t, attacker_t = transports
    run_id = f"{RUN_ID}-squat"
    authorize = StaticTokenAuthorizer([KEY])
    averagers = [Averager(t, run_id=run_id, credential=KEY, authorize=authorize, max_numel=NUMEL, config=CONFIG)
                 for t in (a_t, b_t)]
    try:
        for round_index in range(1, 4):  # the next rounds, published before anyone reached them
            record = {"round": round_index, "group_id": "ab" * 8, "leader": attacker_t.peer_id,
                      "members": [attacker_t.peer_id], "owners": [attacker_t.peer_id]}
            # (these transports run without the run's record validators, which now refuse the key outright:
            # groups are no longer a DHT record; tests/unit/net/test_credentials.py checks that)
            attacker_t.run(attacker_t.dht_store(f"lila/{run_id}/avg/{round_index}/group", attacker_t.peer_id,
                                                json.dumps(record).encode(), attacker_t.now() + 3000), timeout=10)
        vectors = [torch.full((NUMEL,), 1.0), torch.full((NUMEL,), 3.0)]
        results: dict[int, object] = {}
        codec, mean = RawCodec(torch.float32), get_aggregator("mean")
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, averagers[i].average(1, vectors[i], codec=codec, aggregator=mean))) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results.values():
            assert result.status == "ok", result.reason  # before: sat_out "late: ... already formed"
            assert result.group_size == 2
            assert torch.equal(result.average, torch.full((NUMEL,), 2.0))
    finally:
        for averager in averagers:
            averager.shutdown()


def test_sybil_hashes_outside_the_group_do_not_outvote_it(transports: list[Transport]) -> None:
    a_t, b_t, attacker_t = transports
    run_id = f"{RUN_ID}-verify"
    authorize = StaticTokenAuthorizer([KEY])
    a = Averager(a_t, run_id=run_id, credential=KEY, authorize=authorize, max_numel=NUMEL, config=CONFIG)
    try:
        good, fake, other = "1" * 64, "f" * 64, "2" * 64
        sybils = [PeerIdentity.generate().peer_id for _ in range(3)]
        for sybil in sybils:  # three credentials of one attacker, one fake hash
            assert attacker_t.run(attacker_t.dht_store(f"lila/{run_id}/verify/1", sybil, fake.encode(),
                                                       attacker_t.now() + 60), timeout=10)
        assert b_t.run(publish_hash(b_t, run_id, 1, good, expiration_s=60), timeout=10)
        members = sorted([a_t.peer_id, b_t.peer_id])
        report = a.verify_round(1, good, members=members, wait=0.5)
        assert report.reference_hash == good and report.i_agree  # before: the sybils' fake hash won, 3 to 2
        assert report.agreeing == tuple(members) and report.disagreeing == ()

        # a split group (1 to 1): no re-sync to a minority, whatever the peer ids — unless the coordinator
        # names the other hash
        assert b_t.run(publish_hash(b_t, run_id, 2, other, expiration_s=60), timeout=10)
        split = a.verify_round(2, good, members=members, wait=0.5)
        assert split.reference_hash == good and split.i_agree
        told = a.verify_round(2, good, members=members, wait=0.5, trusted=other)
        assert told.reference_hash == other and not told.i_agree and told.agreeing == (b_t.peer_id,)
    finally:
        a.shutdown()


def test_banned_donors_are_neither_awaited_nor_followed(transports: list[Transport]) -> None:
    authority = CredentialAuthority(bytes(range(32)), run=RUN_ID)
    verifier = CredentialVerifier([authority.public_key], run=RUN_ID)
    a, b, attacker = _syncs(transports, f"{RUN_ID}-ban", CredentialAuthorizer(verifier))
    verifier.set_revoked([attacker.me])  # the heartbeat's revoked_libp2p_ids reached this peer
    try:
        for sync in (a, b):
            sync.state_sync.publish(_snapshot(0, torch.zeros(4)))
        attacker.state_sync.publish(_snapshot(1, torch.ones(4)))
        b.post_ready(1)
        result = a.wait_for_peers(1)
        assert result.moved_on is None  # before: 1 (a would re-sync from the banned peer)
        assert result.expected == (b.me,) and result.waited_s < FAST_S
        assert a.network_step() == 0
    finally:
        for sync in (a, b, attacker):
            sync.state_sync.shutdown()


def test_a_record_cannot_outlive_its_writers_credential(tmp_path) -> None:
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils import MSGPackSerializer, get_dht_time

    now = get_dht_time()
    authority = CredentialAuthority(bytes(range(32)), run=RUN_ID, ttl_s=60.0)
    verifier = CredentialVerifier([authority.public_key], run=RUN_ID)
    me = PeerIdentity.generate()
    credentials = CredentialFile(tmp_path / "cred.json")
    credentials.write(authority.issue(peer="p-1", libp2p_id=me.peer_id, public_key=me.public_key, now=now)[0])
    validator = DhtRecordValidator(identity=me, credentials=credentials, verifier=verifier)

    def signed(expiration: float) -> DHTRecord:
        key = f"lila/{RUN_ID}/state"
        record = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(me.peer_id),
                           MSGPackSerializer.dumps(wrap(key, b'{"outer_step": 1}')), expiration)
        return DHTRecord(record.key, record.subkey, validator.sign_value(record), expiration)

    assert validator.validate(signed(now + 30))
    assert not validator.validate(signed(now + 3000))  # before: kept for 50 min after the credential expired

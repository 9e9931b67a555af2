# SPDX-License-Identifier: AGPL-3.0-or-later
"""Averaging credentials: bound to one libp2p identity, signed by the run's authority, expiring, revocable;
the DHT record envelope and schemas (pure: no DHT is started here)."""

from __future__ import annotations

import base64
import json

import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import PeerID
from hivemind.utils import MSGPackSerializer

from lila_net.credentials import (
    CREDENTIAL_PREFIX,
    CredentialAuthority,
    CredentialError,
    CredentialVerifier,
    base58_encode,
    libp2p_peer_id,
)
from lila_net.dht.records import RecordError, check_record, unwrap, wrap
from lila_net.dht.security import CredentialFile, DhtRecordValidator, PeerIdentity, open_envelope
from peer.averaging.auth import CredentialAuthorizer

RUN = "trust-test"
NOW = 1_000_000.0
TTL = 600.0
SEED = bytes(range(32))


@pytest.fixture(scope="module")
def identities() -> list[PeerIdentity]:
    return [PeerIdentity.generate() for _ in range(2)]


@pytest.fixture
def authority() -> CredentialAuthority:
    return CredentialAuthority(SEED, run=RUN, ttl_s=TTL)


@pytest.fixture
def verifier(authority: CredentialAuthority) -> CredentialVerifier:
    return CredentialVerifier([authority.public_key], run=RUN)


def issue(authority: CredentialAuthority, identity: PeerIdentity, now: float = NOW) -> str:
    return authority.issue(peer="p-1", libp2p_id=identity.peer_id, public_key=identity.public_key, now=now)[0]


def test_peer_id_derivation_matches_libp2p(identities: list[PeerIdentity], tmp_path) -> None:
    for identity in identities:
        path = identity.write_identity_file(tmp_path / "id.key")
        assert PeerID.from_identity(path.read_bytes()).to_base58() == identity.peer_id
        assert libp2p_peer_id(identity.public_key) == identity.peer_id
        assert PeerIdentity.from_identity_file(path).peer_id == identity.peer_id
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert base58_encode(b"\x00\x00\x01") == "112"


def test_valid_credential_names_exactly_its_identity(authority, verifier, identities) -> None:
    me, other = identities
    token = issue(authority, me)
    assert token.startswith(CREDENTIAL_PREFIX + ".")
    claims = verifier.verify(token, now=NOW + 1, libp2p_id=me.peer_id)
    assert (claims.run, claims.peer, claims.libp2p_id) == (RUN, "p-1", me.peer_id)
    assert (claims.issued_at, claims.expires_at, claims.public_key) == (NOW, NOW + TTL, me.public_key)
    with pytest.raises(CredentialError, match="only valid for the identity it was issued to"):
        verifier.verify(token, now=NOW + 1, libp2p_id=other.peer_id)  # replayed by another peer
    authorize = CredentialAuthorizer(verifier, clock=lambda: NOW + 1)
    assert authorize(me.peer_id, token.encode()) is True
    assert authorize(other.peer_id, token.encode()) is False
    assert authorize(me.peer_id, b"") is False


def test_expiry_clock_skew_and_revocation(authority, verifier, identities) -> None:
    me = identities[0]
    token = issue(authority, me)
    with pytest.raises(CredentialError, match="expired"):
        verifier.verify(token, now=NOW + TTL)
    with pytest.raises(CredentialError, match="in the future"):
        verifier.verify(token, now=NOW - verifier.clock_skew_s - 1)
    verifier.set_revoked([me.peer_id])
    with pytest.raises(CredentialError, match="banned"):
        verifier.verify(token, now=NOW + 1)
    verifier.set_revoked([])
    assert verifier.verify(token, now=NOW + 1).libp2p_id == me.peer_id


def test_forged_altered_and_foreign_credentials_are_refused(authority, verifier, identities) -> None:
    me, other = identities
    token = issue(authority, me)
    prefix, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["id"] = other.peer_id  # try to move the credential to another identity
    altered = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(CredentialError, match="signature is invalid"):
        verifier.decode(f"{prefix}.{altered}.{signature}")
    stranger = CredentialAuthority(bytes(32), run=RUN)
    with pytest.raises(CredentialError, match="unknown key"):
        verifier.decode(issue(stranger, me))
    other_run = CredentialAuthority(SEED, run="another-run")
    with pytest.raises(CredentialError, match="for run 'another-run'"):
        verifier.decode(issue(other_run, me))
    for garbage in ("", "lila-cred-v1", "lila-cred-v1.!!.??", "x" * 5000, "lila-cred-v1.e30.AA"):
        with pytest.raises(CredentialError):
            verifier.decode(garbage)


def test_authority_refuses_an_id_that_is_not_the_keys(authority, identities) -> None:
    me, other = identities
    with pytest.raises(CredentialError, match="not the peer id of public_key"):
        authority.issue(peer="p-1", libp2p_id=other.peer_id, public_key=me.public_key, now=NOW)
    for garbage in (b"ssh-rsa garbage", b"\x00\t\x00", b"ssh-ed25519 AAAA"):  # the first two found by fuzzing
        with pytest.raises(CredentialError, match="not an OpenSSH public key"):
            authority.issue(peer="p-1", libp2p_id=me.peer_id, public_key=garbage, now=NOW)
    with pytest.raises(CredentialError, match="not a base58 libp2p peer id"):
        authority.issue(peer="p-1", libp2p_id="0OIl", public_key=me.public_key, now=NOW)
    assert "SEED" not in repr(authority) and authority.key_id in repr(authority)


def test_record_schemas() -> None:
    writer = "Qm" + "a" * 44
    check_record("lila/run/avg/3/peers", b'{"v":1,"client":false}', writer=writer)
    check_record("lila/run/verify/3", b"ab" * 32, writer=writer)
    check_record("lila/run/state", b'{"outer_step": 7}', writer=writer)
    check_record("lila/run/state", b'{"outer_step": 7, "params_sha256": "' + b"0" * 64 + b'"}', writer=writer)
    check_record("lila/run/ready/3", b'{"v":1}', writer=writer)
    check_record("lila/run/ready/3", b'{"v":1,"go":true}', writer=writer)
    check_record("lila/run/absent", b'{"why":"left"}', writer=writer)
    group = {"round": 3, "group_id": "0" * 16, "leader": writer, "members": [writer], "owners": [writer]}
    bad = [
        ("other/key", b"{}", "not a LILA run key"),
        ("lila/run/avg/3/peers", b'{"v":1,"client":0}', "schema"),  # strict bool
        ("lila/run/avg/3/peers", b'{"v":1,"client":true,"x":1}', "schema"),  # extra field
        ("lila/run/avg/3/peers", b'{"v":1,"client":true' + b" " * 300 + b"}", "exceeds"),
        ("lila/run/state", b'{"outer_step": -1}', "schema"),
        ("lila/run/state", b'{"outer_step": 1.0}', "schema"),  # strict int
        ("lila/run/state", b"[1]", "not a JSON object"),
        ("lila/run/state", b"\xff", "not UTF-8 JSON"),
        ("lila/run/verify/3", b"XY" * 32, "not a hex sha256"),
        ("lila/run/ready/3", b'{"v":2}', "schema"),
        ("lila/run/ready/3", b'{"v":1,"go":1}', "schema"),  # strict bool
        ("lila/run/absent", b'{"why":"bored"}', "schema"),
        ("lila/run/state", b'{"outer_step": 1, "params_sha256": "zz"}', "schema"),
        ("lila/run/avg/3/group", json.dumps(group).encode(), "not a LILA run key"),  # groups are not published
    ]
    for key, value, message in bad:
        with pytest.raises(RecordError, match=message):
            check_record(key, value, writer=writer)
    assert unwrap(wrap("lila/run/state", b"v")) == ("lila/run/state", b"v")
    for broken in (b"", b"LKEY", b"LKEY\x00\x09abc", b"XXXX\x00\x00"):
        with pytest.raises(RecordError):
            unwrap(broken)


def _record(key: str, subkey: str, value: bytes, expiration: float) -> DHTRecord:
    return DHTRecord(
        DHTID.generate(source=key).to_bytes(),
        MSGPackSerializer.dumps(subkey),
        MSGPackSerializer.dumps(wrap(key, value)),
        expiration,
    )


def test_record_validator_accepts_only_signed_records_of_their_writer(
    authority, verifier, identities, tmp_path
) -> None:
    from hivemind.utils import get_dht_time

    me, other = identities
    now = get_dht_time()
    files = []
    validators = []
    for index, identity in enumerate(identities):
        credentials = CredentialFile(tmp_path / f"cred-{index}.json")
        credentials.write(issue(authority, identity, now=now))
        files.append(credentials)
        validators.append(DhtRecordValidator(identity=identity, credentials=credentials, verifier=verifier))
    mine, theirs = validators

    record = _record("lila/run/state", me.peer_id, b'{"outer_step": 2}', now + 30)
    signed = DHTRecord(record.key, record.subkey, mine.sign_value(record), record.expiration_time)
    assert theirs.validate(signed)
    # readers get the whole signed envelope (to forward as evidence) and open it to the stored bytes
    received = MSGPackSerializer.loads(mine.strip_value(signed))
    assert received == signed.value and open_envelope(received) == (MSGPackSerializer.loads(record.value), received)
    assert open_envelope(b"LKEY-plain") == (b"LKEY-plain", None)  # a DHT without the validator
    assert not theirs.validate(record)  # unsigned
    for field, value in (("expiration_time", now + 31), ("subkey", MSGPackSerializer.dumps(other.peer_id))):
        tampered = DHTRecord(**{**signed.__dict__, field: value})
        assert not theirs.validate(tampered)
    # a record under another peer's name, signed with the writer's own key and credential
    forged = _record("lila/run/state", other.peer_id, b'{"outer_step": 9}', now + 30)
    assert not theirs.validate(DHTRecord(forged.key, forged.subkey, mine.sign_value(forged), now + 30))
    # a correctly signed record that breaks the schema, or lives too long, or claims another key
    for key, value, expiration in (
        ("lila/run/state", b'{"outer_step": "x"}', now + 30),
        ("lila/run/state", b'{"outer_step": 2}', now + 7200),
    ):
        rec = _record(key, me.peer_id, value, expiration)
        assert not theirs.validate(DHTRecord(rec.key, rec.subkey, mine.sign_value(rec), expiration))
    moved = DHTRecord(DHTID.generate(source="lila/run/verify/1").to_bytes(), record.subkey, record.value, now + 30)
    assert not theirs.validate(DHTRecord(moved.key, moved.subkey, mine.sign_value(moved), now + 30))
    assert not theirs.validate(DHTRecord(record.key, record.subkey, b"\x00" * 50, now + 30))

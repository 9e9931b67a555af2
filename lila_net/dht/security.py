# SPDX-License-Identifier: AGPL-3.0-or-later
"""Only admitted peers in the run's DHT: a hivemind authorizer and a record validator built on credentials.

hivemind runs the DHT in a child process; both objects below are handed to ``hivemind.DHT`` at start
(``authorizer=``, ``record_validators=``) and live in that process. They read the peer's current
credential and the list of banned peers from a :class:`CredentialFile` that the main process rewrites
when it renews the credential, so a renewal or a ban reaches the DHT process within
``RELOAD_INTERVAL_S``.

- :class:`DhtCredentialAuthorizer` (a ``TokenAuthorizerBase``): every DHT request and response is signed
  with the peer's RSA key and carries its credential as the access token; a node refuses requests (and
  ignores responses) whose credential is not signed by the run's authority, expired, revoked, or bound to
  another key. A peer without a valid credential therefore cannot bootstrap, find or store anything.
- :class:`DhtRecordValidator` (a ``RecordValidatorBase``): every stored value carries the writer's
  credential and an RSA signature over (key id, subkey, value, expiration). A record is accepted only if
  the credential is the authority's, the subkey is the writer's own libp2p id, the signature checks out,
  it expires within ``MAX_RECORD_LIFETIME_S`` and no later than the writer's credential, and the value
  fits the schema of its key (:mod:`lila_net.dht.records`). So an admitted peer cannot write under
  another peer's name, nor write anything but the run's own records, nor make a record outlive its
  credential. The check is against the record's own expiration, never the clock: hivemind refuses a whole
  dictionary key when one of its subkeys fails validation, so a record valid when stored must stay valid
  until it expires. For the same reason bans are not checked here but by the authorizer at the RPC level
  (a banned peer can store nothing new) and by every reader (donors, matchmaking candidates and group
  records of banned peers are ignored: :func:`peer.averaging.matchmaking.revoked_ids`).

:class:`PeerIdentity` is the peer's RSA key, used at once as its libp2p identity (so its libp2p peer id
is the id the credential names), as the authorizer's key and as the record signing key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.proto import crypto_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from lila_net.credentials import MAX_CREDENTIAL_BYTES, Credential, CredentialError, CredentialVerifier
from lila_net.credentials import libp2p_peer_id as derive_peer_id
from lila_net.dht.records import RecordError, check_record, unwrap

logger = logging.getLogger(__name__)

SIGNATURE_MAGIC = b"LSIG1"
SIGNATURE_PREFIX = struct.Struct(">5sHH")
MAX_SIGNATURE_BYTES = 1024
MAX_RECORD_LIFETIME_S = 3600.0
RELOAD_INTERVAL_S = 1.0
IDENTITY_FILE_MODE = 0o600
# msgpack headers of a bytes value ("bin 8/16/32"): the only serialized values we accept
_MSGPACK_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}


class PeerIdentity:
    """An RSA key used as the peer's libp2p identity, DHT authorizer key and record signing key."""

    def __init__(self, private_key: RSAPrivateKey) -> None:
        self.private_key = private_key
        self.public_key: bytes = private_key.get_public_key().to_bytes()  # OpenSSH format
        self.peer_id: str = derive_peer_id(self.public_key)

    def __repr__(self) -> str:
        return f"PeerIdentity(peer_id={self.peer_id})"

    @classmethod
    def generate(cls) -> PeerIdentity:
        """A fresh 2048-bit identity (RSA key generation is slow: one per process start, not per call)."""
        return cls(RSAPrivateKey())

    @classmethod
    def from_identity_file(cls, path: str | Path) -> PeerIdentity:
        """Load a libp2p identity file (protobuf ``PrivateKey`` with an RSA DER key, as hivemind writes)."""
        proto = crypto_pb2.PrivateKey.FromString(Path(path).read_bytes())
        if proto.key_type != crypto_pb2.RSA:
            raise ValueError(f"{path}: only RSA libp2p identities are supported")
        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key._private_key = serialization.load_der_private_key(proto.data, password=None)
        return cls(key)

    def write_identity_file(self, path: str | Path) -> Path:
        """Write the key as a libp2p identity file (mode 0600) that ``hivemind.DHT(identity_path=...)`` reads."""
        path = Path(path)
        proto = crypto_pb2.PrivateKey(key_type=crypto_pb2.RSA, data=self.private_key.to_bytes())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, IDENTITY_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(proto.SerializeToString())
        return path


class CredentialFile:
    """The peer's current credential and the banned libp2p ids, in a JSON file (mode 0600) shared with the
    DHT process. :meth:`write` replaces it atomically; :meth:`load` re-reads it when it changed (at most
    every ``RELOAD_INTERVAL_S``) and updates the verifier's revocation list."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._checked_at = -float("inf")
        self._stamp: tuple[int, int] | None = None
        self._credential = ""
        self._revoked: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # never pickle the credential itself
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def write(self, credential: str, revoked: Iterable[str] = ()) -> None:
        data = json.dumps({"credential": credential, "revoked": sorted(revoked)}).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cred-")
        try:
            os.fchmod(fd, IDENTITY_FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._checked_at = -float("inf")

    def load(self, verifier: CredentialVerifier | None = None) -> tuple[str, tuple[str, ...]]:
        """``(credential, revoked ids)`` as last written; updates ``verifier``'s revocation list."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= RELOAD_INTERVAL_S:
                self._checked_at = now
                try:
                    info = self.path.stat()
                    stamp = (info.st_mtime_ns, info.st_size)
                    if stamp != self._stamp:
                        data = json.loads(self.path.read_bytes())
                        self._credential = str(data["credential"])
                        self._revoked = tuple(str(x) for x in data["revoked"])
                        self._stamp = stamp
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    logger.warning("cannot read the credential file %s: %s", self.path, exc)
            if verifier is not None and verifier.revoked != frozenset(self._revoked):
                verifier.set_revoked(self._revoked)
            return self._credential, self._revoked


class DhtCredentialAuthorizer(TokenAuthorizerBase):
    """hivemind's token protocol with LILA credentials as access tokens (see the module docstring).

    ``refresh_margin_s``: the token is re-read from the credential file this long before it expires
    (the main process renews at half the lifetime, so any margin below that works).
    """

    def __init__(
        self,
        *,
        identity: PeerIdentity,
        credentials: CredentialFile,
        verifier: CredentialVerifier,
        refresh_margin_s: float = 60.0,
    ) -> None:
        super().__init__(local_private_key=identity.private_key)
        self._identity_key = identity.public_key
        self._credentials = credentials
        self._verifier = verifier
        self._refresh_margin_s = refresh_margin_s

    async def get_token(self) -> AccessToken:
        credential, _ = self._credentials.load(self._verifier)
        try:
            claims = self._verifier.verify(credential, now=get_dht_time())
        except CredentialError as exc:
            raise PermissionError(f"this peer has no valid credential for the run's DHT: {exc}") from None
        if claims.public_key != self._identity_key:
            raise PermissionError("the credential file names another identity than this DHT node's key")
        return AccessToken(
            username=claims.libp2p_id,
            public_key=claims.public_key,
            expiration_time=repr(claims.expires_at),
            signature=credential.encode(),
        )

    def is_token_valid(self, access_token: AccessToken) -> bool:
        self._credentials.load(self._verifier)
        try:
            claims = self._verifier.verify(access_token.signature, now=get_dht_time())
        except CredentialError as exc:
            logger.debug("refused a DHT access token: %s", exc)
            return False
        return claims.public_key == access_token.public_key and claims.libp2p_id == access_token.username

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        try:
            expires_at = float(access_token.expiration_time)
        except ValueError:
            return True
        current, _ = self._credentials.load(self._verifier)
        return current.encode() != access_token.signature or get_dht_time() >= expires_at - self._refresh_margin_s


def _msgpack_bin_payload(value: bytes) -> bytes | None:
    """The bytes inside a msgpack ``bin`` value, or None when ``value`` is anything else."""
    if not value or value[0] not in _MSGPACK_BIN:
        return None
    width = _MSGPACK_BIN[value[0]]
    if len(value) < 1 + width:
        return None
    length = int.from_bytes(value[1 : 1 + width], "big")
    return value[1 + width :] if len(value) == 1 + width + length else None


def signed_bytes(record: DHTRecord) -> bytes:
    """What a record's writer signs: (key id, subkey, value, expiration), length-prefixed."""
    digest = hashlib.sha256(SIGNATURE_MAGIC)
    for part in (record.key, record.subkey, record.value):
        digest.update(struct.pack(">Q", len(part)))
        digest.update(part)
    digest.update(struct.pack(">d", record.expiration_time))
    return digest.digest()


def split_envelope(value: bytes) -> tuple[bytes, bytes, bytes]:
    """``(credential, signature, inner value)`` of a signed record value; RecordError when malformed."""
    if len(value) < SIGNATURE_PREFIX.size:
        raise RecordError("record is not signed")
    magic, cred_len, sig_len = SIGNATURE_PREFIX.unpack_from(value)
    if magic != SIGNATURE_MAGIC or cred_len > MAX_CREDENTIAL_BYTES or sig_len > MAX_SIGNATURE_BYTES:
        raise RecordError("record signature envelope is malformed")
    start = SIGNATURE_PREFIX.size
    if len(value) < start + cred_len + sig_len:
        raise RecordError("record signature envelope is truncated")
    credential = value[start : start + cred_len]
    signature = value[start + cred_len : start + cred_len + sig_len]
    return credential, signature, value[start + cred_len + sig_len :]


def open_envelope(value: bytes) -> tuple[bytes, bytes | None]:
    """``(stored bytes, envelope)`` of a value a reader got from the DHT: with the record validator the
    reader receives the signed envelope (``DhtRecordValidator.strip_value``), and ``envelope`` is it; on
    a DHT without the validator (tests, private runs) the value is the stored bytes and ``envelope`` is
    None. Raises RecordError when an envelope does not hold a serialized byte string."""
    if not value.startswith(SIGNATURE_MAGIC):
        return value, None
    inner = _msgpack_bin_payload(split_envelope(value)[2])
    if inner is None:
        raise RecordError("record value is not a byte string")
    return inner, value


def check_signed_record(
    record: DHTRecord,
    verifier: CredentialVerifier,
    *,
    max_lifetime_s: float = MAX_RECORD_LIFETIME_S,
    public_keys: dict[bytes, RSAPublicKey] | None = None,
) -> tuple[Credential, str, bytes]:
    """``(writer's credential, key name, value)`` of a signed record the run's authority admitted; raises
    RecordError/CredentialError otherwise (the checks: :class:`DhtRecordValidator`). ``public_keys``: a
    cache of parsed writer keys."""
    credential, signature, inner = split_envelope(record.value)
    claims = verifier.decode(credential)  # authority signature and run; expiry: see the module docstring
    if record.subkey != MSGPackSerializer.dumps(claims.libp2p_id):
        raise RecordError("record subkey is not its writer's peer id")
    if record.expiration_time > get_dht_time() + max_lifetime_s:
        raise RecordError(f"record lives longer than {max_lifetime_s:g} s")
    if record.expiration_time > claims.expires_at:
        raise RecordError("record outlives its writer's credential")
    cache = {} if public_keys is None else public_keys
    key = cache.get(claims.public_key)
    if key is None:
        key = cache[claims.public_key] = RSAPublicKey.from_bytes(claims.public_key)
    if not key.verify(signed_bytes(dataclasses.replace(record, value=inner)), signature):
        raise RecordError("record signature is invalid")
    payload = _msgpack_bin_payload(inner)
    if payload is None:
        raise RecordError("record value is not a byte string")
    name, value = unwrap(payload)
    if DHTID.generate(source=name).to_bytes() != record.key:
        raise RecordError("record key name does not hash to its key id")
    check_record(name, value, writer=claims.libp2p_id)
    return claims, name, value


class DhtRecordValidator(RecordValidatorBase):
    """Signs our records and accepts only signed, schema-checked records of the run (module docstring)."""

    def __init__(
        self,
        *,
        identity: PeerIdentity,
        credentials: CredentialFile,
        verifier: CredentialVerifier,
        max_lifetime_s: float = MAX_RECORD_LIFETIME_S,
    ) -> None:
        self._private_key = identity.private_key
        self._credentials = credentials
        self._verifier = verifier
        self.max_lifetime_s = max_lifetime_s
        self._public_keys: dict[bytes, RSAPublicKey] = {}

    def sign_value(self, record: DHTRecord) -> bytes:
        credential, _ = self._credentials.load()
        signature = self._private_key.sign(signed_bytes(record))
        raw = credential.encode()
        return SIGNATURE_PREFIX.pack(SIGNATURE_MAGIC, len(raw), len(signature)) + raw + signature + record.value

    def strip_value(self, record: DHTRecord) -> bytes:
        """Hand readers the WHOLE signed envelope (as a serialized byte string) instead of the bare value:
        a reader can then forward a record as evidence of what its writer claimed
        (:mod:`lila_net.dht.evidence`); :func:`open_envelope` takes the value out."""
        return MSGPackSerializer.dumps(bytes(record.value))

    def check(self, record: DHTRecord) -> Credential:
        """The writer's credential if ``record`` is acceptable; raises RecordError/CredentialError otherwise."""
        return check_signed_record(record, self._verifier, max_lifetime_s=self.max_lifetime_s,
                                   public_keys=self._public_keys)[0]

    def validate(self, record: DHTRecord) -> bool:
        try:
            self.check(record)
        except (RecordError, CredentialError, ValueError) as exc:
            logger.debug("refused a DHT record: %s", exc)
            return False
        except Exception:
            logger.exception("record validation failed unexpectedly; refusing the record")
            return False
        return True

    @property
    def priority(self) -> int:
        return 100  # sign last, validate first: the envelope is the outermost layer


def dht_options(
    *,
    identity: PeerIdentity,
    identity_path: str | Path,
    credentials: CredentialFile,
    verifier: CredentialVerifier,
) -> dict[str, Any]:
    """``hivemind.DHT`` keyword arguments that make a node admitted-only (writes the identity file)."""
    identity.write_identity_file(identity_path)
    return {
        "identity_path": str(identity_path),
        "check_if_identity_free": False,  # a freshly generated key is never taken
        "authorizer": DhtCredentialAuthorizer(identity=identity, credentials=credentials, verifier=verifier),
        "record_validators": [DhtRecordValidator(identity=identity, credentials=credentials, verifier=verifier)],
    }

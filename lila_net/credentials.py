# SPDX-License-Identifier: AGPL-3.0-or-later
"""Averaging credentials: the coordinator's signature binding an admitted peer to its libp2p identity.

Peers talk to each other (DHT, matchmaking, all-reduce, state download) over libp2p, whose secure
channel authenticates every stream with the caller's **libp2p peer id** (the hash of its RSA public
key). The coordinator signs, with an Ed25519 key of the run, a short-lived credential naming exactly
one libp2p identity (why not a shared secret, and the limits of this design:
``docs/decisions/0002-per-identity-averaging-credentials.md``)::

    lila-cred-v1.<base64url(JSON payload)>.<base64url(Ed25519 signature)>
    payload = {"v": 1, "run": run name, "peer": coordinator peer id, "id": libp2p peer id,
               "pk": base64 of the OpenSSH RSA public key, "iat": issued at, "exp": expires at,
               "kid": id of the signing key}

* The coordinator issues one only to a live, non-banned session (``IssueCredential``), and only after
  checking that ``id`` is the libp2p id of ``pk`` (:func:`libp2p_peer_id`), so nobody can get a
  credential for an identity whose private key they do not hold.
* A peer checks a credential with :class:`CredentialVerifier`: signature under one of the authority
  keys it got at Join, the run, the expiry, the revocation list, and that ``id`` equals the
  libp2p-authenticated id of the stream it came on. A credential copied by another peer is useless:
  its streams carry another peer id, and it cannot sign DHT records for ``pk``.
* Revocation: credentials live ``credential_ttl_s`` (default 1 h) and banned peers get no new one.
  Faster, peers learn the libp2p ids of banned peers (``revoked`` in IssueCredential and Heartbeat
  replies) and refuse them at once.

A banned peer's credential stays valid, for peers that have not yet heard of the ban, until it
expires: ``credential_ttl_s`` bounds how long. Rotating the authority key (a new ``averaging_ed25519``
secret in the database) invalidates every credential at once; peers pick the new public key up when
they re-Join.

Only the standard library and ``cryptography`` (already needed by hivemind) are used; this module is
pure (no I/O, no clock), shared by the coordinator (signing) and the peers (checking).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

CREDENTIAL_PREFIX = "lila-cred-v1"
CREDENTIAL_VERSION = 1
AUTHORITY_SEED_BYTES = 32
KEY_ID_HEX_CHARS = 16
MAX_CREDENTIAL_BYTES = 4096
MAX_PUBLIC_KEY_BYTES = 2048
MIN_RSA_BITS = 2048
MAX_REVOKED_IDS = 100_000
DEFAULT_CREDENTIAL_TTL_S = 3600.0
DEFAULT_CLOCK_SKEW_S = 60.0
# libp2p peer ids: multihash (sha2-256, code 0x12, 32 bytes) of the protobuf PublicKey message
_MULTIHASH_SHA256 = b"\x12\x20"
_PROTO_RSA_KEY_TYPE = b"\x08\x00"  # field 1 (KeyType), varint 0 = RSA (proto2 "required": always written)
_PROTO_DATA_TAG = 0x12  # field 2 (data), length-delimited
_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
PEER_ID_PATTERN = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{20,128}$")


class CredentialError(ValueError):
    """A credential (or the material to make one) was refused; the message says why (no secrets in it)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def base58_encode(data: bytes) -> str:
    """Bitcoin-alphabet base58, as libp2p uses for peer ids."""
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_BASE58_ALPHABET[rem])
    leading = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading + "".join(reversed(out))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def load_rsa_public_key(openssh: bytes) -> rsa.RSAPublicKey:
    """An RSA public key in OpenSSH format (what hivemind's ``RSAPublicKey.to_bytes()`` gives)."""
    if not openssh or len(openssh) > MAX_PUBLIC_KEY_BYTES:
        raise CredentialError(
            f"public key of {len(openssh)} bytes: expected an OpenSSH RSA key of at most {MAX_PUBLIC_KEY_BYTES}"
        )
    try:
        key = serialization.load_ssh_public_key(openssh)
    except (ValueError, TypeError, binascii.Error, IndexError, UnsupportedAlgorithm) as exc:
        raise CredentialError(f"public key is not an OpenSSH public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError("public key is not an RSA key: libp2p identities of LILA peers are RSA")
    if key.key_size < MIN_RSA_BITS:
        raise CredentialError(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} are required")
    return key


def libp2p_peer_id(openssh_public_key: bytes) -> str:
    """The libp2p peer id (base58) of an RSA public key given in OpenSSH format."""
    key = load_rsa_public_key(openssh_public_key)
    der = key.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message = _PROTO_RSA_KEY_TYPE + bytes([_PROTO_DATA_TAG]) + _varint(len(der)) + der
    return base58_encode(_MULTIHASH_SHA256 + hashlib.sha256(message).digest())


def key_id(public_key: bytes) -> str:
    """Short id of an authority public key (raw 32 Ed25519 bytes)."""
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_HEX_CHARS]


@dataclass(frozen=True, slots=True)
class Credential:
    """What a valid credential says."""

    run: str
    peer: str  # coordinator peer id ("p-...")
    libp2p_id: str
    public_key: bytes  # OpenSSH RSA public key of the libp2p identity
    issued_at: float
    expires_at: float
    key_id: str


class CredentialAuthority:
    """Signs credentials with the run's Ed25519 key (the coordinator side).

    ``seed``: 32 secret bytes (the coordinator keeps them in its database). ``ttl_s``: lifetime of a
    credential; short enough that a ban reaches peers that missed the revocation list soon, long enough
    that peers renew rarely (they renew at half the lifetime). 1 h is a good default; below a minute
    peers spend their time renewing.
    """

    def __init__(self, seed: bytes, *, run: str, ttl_s: float = DEFAULT_CREDENTIAL_TTL_S) -> None:
        if len(seed) != AUTHORITY_SEED_BYTES:
            raise ValueError(f"the authority seed must have {AUTHORITY_SEED_BYTES} bytes, got {len(seed)}")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s={ttl_s}: the credential lifetime must be > 0 seconds")
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key)
        self.run = run
        self.ttl_s = ttl_s

    def __repr__(self) -> str:  # never show the key
        return f"CredentialAuthority(run={self.run!r}, key_id={self.key_id}, ttl_s={self.ttl_s})"

    def issue(self, *, peer: str, libp2p_id: str, public_key: bytes, now: float) -> tuple[str, Credential]:
        """A signed credential for ``libp2p_id``; raises :class:`CredentialError` if ``public_key`` is
        not the key of that id (the caller must then fix its request)."""
        if not PEER_ID_PATTERN.match(libp2p_id):
            raise CredentialError(f"libp2p_peer_id {libp2p_id[:80]!r} is not a base58 libp2p peer id")
        derived = libp2p_peer_id(public_key)
        if derived != libp2p_id:
            raise CredentialError(
                "libp2p_peer_id is not the peer id of public_key: send the id and the public key of the "
                "same libp2p identity"
            )
        claims = Credential(self.run, peer, libp2p_id, public_key, now, now + self.ttl_s, self.key_id)
        payload = json.dumps(
            {
                "v": CREDENTIAL_VERSION,
                "run": claims.run,
                "peer": claims.peer,
                "id": claims.libp2p_id,
                "pk": base64.b64encode(public_key).decode(),
                "iat": claims.issued_at,
                "exp": claims.expires_at,
                "kid": claims.key_id,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        signed = f"{CREDENTIAL_PREFIX}.{_b64(payload)}"
        token = f"{signed}.{_b64(self._key.sign(signed.encode()))}"
        return token, claims


def _parse_payload(raw: bytes) -> Credential:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialError("credential payload is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != CREDENTIAL_VERSION:
        raise CredentialError(f"credential payload is not a version {CREDENTIAL_VERSION} object")
    strings = ("run", "peer", "id", "pk", "kid")
    numbers = ("iat", "exp")
    if any(not isinstance(data.get(k), str) for k in strings) or any(
        isinstance(data.get(k), bool) or not isinstance(data.get(k), (int, float)) for k in numbers
    ):
        raise CredentialError(f"credential payload needs string fields {strings} and numbers {numbers}")
    try:
        public_key = base64.b64decode(data["pk"], validate=True)
    except (binascii.Error, ValueError):
        raise CredentialError("credential field pk is not base64") from None
    return Credential(
        data["run"], data["peer"], data["id"], public_key, float(data["iat"]), float(data["exp"]), data["kid"]
    )


class CredentialVerifier:
    """Checks credentials against the authority's public keys (the peer side).

    ``authority_keys``: raw Ed25519 public keys (from JoinResponse.authority_public_keys). ``run``: the
    run name every credential must carry. ``clock_skew_s``: how far in the future ``iat`` may be (peer
    clocks differ); a minute is plenty. :meth:`set_revoked` replaces the list of banned libp2p ids.
    Results are cached per credential: an Ed25519 check on every DHT and averaging call would add up,
    and the cache keeps those hot paths cheap.
    """

    CACHE_SIZE = 4096

    def __init__(
        self, authority_keys: Iterable[bytes], *, run: str, clock_skew_s: float = DEFAULT_CLOCK_SKEW_S
    ) -> None:
        keys = {}
        for raw in authority_keys:
            try:
                keys[key_id(raw)] = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            except ValueError:
                raise CredentialError(
                    f"authority key of {len(raw)} bytes is not an Ed25519 public key: re-Join the coordinator"
                ) from None
        if not keys:
            raise CredentialError(
                "no authority key: the coordinator sent none (it is older than this peer; upgrade it)"
            )
        self._keys = keys
        self.run = run
        self.clock_skew_s = clock_skew_s
        self._revoked: frozenset[str] = frozenset()
        self._cache: dict[str, Credential] = {}

    @property
    def revoked(self) -> frozenset[str]:
        return self._revoked

    def set_revoked(self, libp2p_ids: Iterable[str]) -> None:
        """Refuse these libp2p ids from now on (the full current list, not a delta)."""
        revoked = frozenset(str(x) for x in libp2p_ids)
        if len(revoked) > MAX_REVOKED_IDS:
            raise CredentialError(f"revocation list of {len(revoked)} ids exceeds {MAX_REVOKED_IDS}")
        self._revoked = revoked

    def decode(self, token: bytes | str) -> Credential:
        """The claims of a correctly signed credential of this run, expired or not."""
        text = token.decode("ascii", errors="replace") if isinstance(token, (bytes, bytearray)) else token
        if len(text) > MAX_CREDENTIAL_BYTES:
            raise CredentialError(f"credential of {len(text)} bytes exceeds {MAX_CREDENTIAL_BYTES}")
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != CREDENTIAL_PREFIX:
            raise CredentialError(f"not a LILA credential (expected {CREDENTIAL_PREFIX}.<payload>.<signature>)")
        try:
            payload, signature = _unb64(parts[1]), _unb64(parts[2])
        except (binascii.Error, ValueError):
            raise CredentialError("credential is not base64url") from None
        claims = _parse_payload(payload)
        key = self._keys.get(claims.key_id)
        if key is None:
            raise CredentialError(
                f"credential signed by unknown key {claims.key_id[:KEY_ID_HEX_CHARS]!r}: not issued by this "
                "run's coordinator (or its key was rotated: re-Join)"
            )
        try:
            key.verify(signature, f"{parts[0]}.{parts[1]}".encode())
        except InvalidSignature:
            raise CredentialError("credential signature is invalid: it was forged or altered") from None
        if claims.run != self.run:
            raise CredentialError(f"credential is for run {claims.run[:64]!r}, not {self.run!r}")
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[text] = claims
        return claims

    def verify(self, token: bytes | str, *, now: float, libp2p_id: str | None = None) -> Credential:
        """The claims of a valid credential; raises :class:`CredentialError` saying what is wrong.

        ``libp2p_id``: the authenticated id of the caller; the credential must name it.
        """
        claims = self.decode(token)
        if libp2p_id is not None and claims.libp2p_id != libp2p_id:
            raise CredentialError(
                f"credential names peer {claims.libp2p_id[:16]}..., but the caller is {libp2p_id[:16]}...: "
                "a credential is only valid for the identity it was issued to"
            )
        if now >= claims.expires_at:
            raise CredentialError("credential expired: ask the coordinator for a new one (IssueCredential)")
        if claims.issued_at > now + self.clock_skew_s:
            raise CredentialError("credential is issued in the future: check this machine's clock")
        if claims.libp2p_id in self._revoked:
            raise CredentialError(f"peer {claims.libp2p_id[:16]}... is banned from this run")
        return claims

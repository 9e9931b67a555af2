# SPDX-License-Identifier: AGPL-3.0-or-later
"""Join tokens and session tokens.

* A **join token** is created by the run's organizer (``lila-coordinator token create``), printed
  once and stored only as its SHA-256 hash. It looks like ``lila_jt_<id>_<secret>``; the id names it
  in listings and in ``token revoke``. Revoking it also ends every session made with it.
* A **session token** is what Join returns: ``v1.<payload>.<mac>``, the payload naming the peer, the
  join token it came from, and its issue and expiry times, signed with HMAC-SHA256 under a secret of
  the run's database. Checking it needs no database access. Tokens and the secret are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from coordinator.storage import JoinTokenRow, Storage

JOIN_TOKEN_PREFIX = "lila_jt"
JOIN_TOKEN_ID_BYTES = 4
JOIN_TOKEN_SECRET_BYTES = 24
SESSION_VERSION = "v1"
MAX_TOKEN_CHARS = 512


class AuthError(Exception):
    """A token was refused; the message tells the caller what to do (safe to send to the peer)."""


def hash_join_token(token: str) -> str:
    """The stored form of a join token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_join_token(
    storage: Storage, *, label: str, now: float, ttl_s: float | None = None
) -> tuple[str, str]:
    """Create and store a join token; returns ``(token_id, token)``. Show the token once, never store it."""
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(
            f"ttl_s={ttl_s}: a join token's lifetime must be > 0 seconds (or None for no expiry)"
        )
    token_id = secrets.token_hex(JOIN_TOKEN_ID_BYTES)
    token = f"{JOIN_TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(JOIN_TOKEN_SECRET_BYTES)}"
    expires_at = None if ttl_s is None else now + ttl_s
    storage.add_join_token(JoinTokenRow(token_id, hash_join_token(token), label, now, expires_at, None))
    return token_id, token


def check_join_token(storage: Storage, token: str, *, now: float) -> JoinTokenRow:
    """The stored row of a valid join token; raises :class:`AuthError` saying what is wrong."""
    if not token:
        raise AuthError(
            "join_token is empty: ask the run's organizer for a join token (lila-coordinator token create)"
        )
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(f"{JOIN_TOKEN_PREFIX}_"):
        raise AuthError(
            f"join_token is not a LILA join token (they start with {JOIN_TOKEN_PREFIX}_): check what you pasted"
        )
    row = storage.join_token_by_hash(hash_join_token(token))
    if row is None:
        raise AuthError("join_token is not known to this run: ask the run's organizer for a valid one")
    if row.revoked_at is not None:
        raise AuthError(f"join token {row.token_id} was revoked: ask the run's organizer for a new one")
    if row.expires_at is not None and now >= row.expires_at:
        raise AuthError(f"join token {row.token_id} expired: ask the run's organizer for a new one")
    return row


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a valid session token says."""

    peer_id: str
    token_id: str
    issued_at: float
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class SessionSigner:
    """Issues and checks HMAC session tokens under one secret.

    ``ttl_s`` is a session's lifetime: long enough that peers rarely re-join (a day is fine), short
    enough that a leaked token stops working; peers renew by calling Join with ``previous_session_token``,
    which :meth:`resume` accepts up to one more ``ttl_s`` after it expired, and only with the join token
    it was made with.
    """

    def __init__(self, secret: bytes, *, ttl_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must have at least 16 bytes")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s={ttl_s}: the session lifetime must be > 0")
        self._secret = secret
        self.ttl_s = ttl_s

    def __repr__(self) -> str:  # never show the secret
        return f"SessionSigner(ttl_s={self.ttl_s})"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def issue(self, peer_id: str, token_id: str, *, now: float) -> str:
        """A session token for ``peer_id``, made with join token ``token_id``."""
        payload = json.dumps(
            {"p": peer_id, "t": token_id, "i": now, "e": now + self.ttl_s}, separators=(",", ":")
        ).encode()
        return f"{SESSION_VERSION}.{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: str) -> SessionClaims:
        """Claims of a token signed by this secret, expired or not; raises :class:`AuthError` otherwise."""
        parts = token.split(".") if len(token) <= MAX_TOKEN_CHARS else []
        if len(parts) != 3 or parts[0] != SESSION_VERSION:
            raise AuthError("the session token is malformed: call Join again to get a new one")
        try:
            payload, mac = _unb64(parts[1]), _unb64(parts[2])
        except (binascii.Error, ValueError):
            raise AuthError("the session token is malformed: call Join again to get a new one") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise AuthError(
                "the session token was not issued by this run (or the coordinator's database was replaced): "
                "call Join again with your join token"
            )
        data = json.loads(payload)
        return SessionClaims(data["p"], data["t"], float(data["i"]), float(data["e"]))

    def resume(self, token: str, *, token_id: str, now: float) -> SessionClaims:
        """Claims of a session to resume with join token ``token_id``: signed here, made with that join
        token, and expired at most ``ttl_s`` ago; raises :class:`AuthError` saying what to do."""
        claims = self.decode(token)
        if not hmac.compare_digest(claims.token_id.encode(), token_id.encode()):
            raise AuthError(
                "the session was made with another join token: resume it with that token, or leave "
                "previous_session_token empty to join as a new peer"
            )
        if now >= claims.expires_at + self.ttl_s:
            raise AuthError(
                f"the session expired more than {self.ttl_s:g} s ago (the session lifetime) and can no longer "
                "be resumed: leave previous_session_token empty to join as a new peer"
            )
        return claims

    def verify(self, token: str, *, now: float) -> SessionClaims:
        """Claims of a valid, unexpired token; raises :class:`AuthError` saying what to do."""
        claims = self.decode(token)
        if now >= claims.expires_at:
            raise AuthError(
                "the session token expired: call Join again (pass it as previous_session_token to keep your peer id)"
            )
        return claims

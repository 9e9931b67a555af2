# SPDX-License-Identifier: AGPL-3.0-or-later
"""Join tokens, HMAC session tokens and the token-bucket rate limiter."""

from __future__ import annotations

import pytest

from coordinator.auth import (
    AuthError,
    SessionSigner,
    check_join_token,
    create_join_token,
    hash_join_token,
)
from coordinator.ratelimit import RateLimiter
from coordinator.storage import Storage

SECRET = b"s" * 32


@pytest.fixture
def storage(tmp_path):
    s = Storage(tmp_path / "run.db")
    yield s
    s.close()


def test_join_token_is_stored_hashed_and_checks(storage):
    token_id, token = create_join_token(storage, label="alice", now=100.0)
    assert token.startswith(f"lila_jt_{token_id}_")
    rows = storage.join_tokens()
    assert [(r.token_id, r.label, r.token_hash) for r in rows] == [
        (token_id, "alice", hash_join_token(token))
    ]
    dump = "\n".join(storage._conn.iterdump())
    assert token not in dump
    assert check_join_token(storage, token, now=101.0).token_id == token_id


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "join_token is empty"),
        ("hello", "not a LILA join token"),
        ("lila_jt_00000000_nope", "not known to this run"),
    ],
)
def test_bad_join_tokens_are_explained(storage, token, message):
    with pytest.raises(AuthError, match=message):
        check_join_token(storage, token, now=0.0)


def test_revoked_and_expired_join_tokens(storage):
    token_id, token = create_join_token(storage, label="", now=0.0, ttl_s=60.0)
    assert check_join_token(storage, token, now=59.0).token_id == token_id
    with pytest.raises(AuthError, match="expired"):
        check_join_token(storage, token, now=60.0)
    other_id, other = create_join_token(storage, label="", now=0.0)
    assert storage.revoke_join_token(other_id, at=5.0)
    assert not storage.revoke_join_token(other_id, at=6.0)
    assert storage.revoked_token_ids() == {other_id}
    with pytest.raises(AuthError, match="revoked"):
        check_join_token(storage, other, now=7.0)


def test_session_token_round_trip_and_expiry():
    signer = SessionSigner(SECRET, ttl_s=100.0)
    token = signer.issue("p-1", "tok1", now=1000.0)
    claims = signer.verify(token, now=1099.9)
    assert (claims.peer_id, claims.token_id, claims.issued_at, claims.expires_at) == (
        "p-1",
        "tok1",
        1000.0,
        1100.0,
    )
    with pytest.raises(AuthError, match="expired: call Join again"):
        signer.verify(token, now=1100.0)
    assert signer.decode(token).peer_id == "p-1"  # still usable as previous_session_token
    assert "sss" not in repr(signer)


def test_tampered_or_foreign_session_tokens_are_refused():
    signer = SessionSigner(SECRET, ttl_s=100.0)
    token = signer.issue("p-1", "tok1", now=0.0)
    version, payload, mac = token.split(".")
    forged = SessionSigner(SECRET, ttl_s=100.0).issue("p-2", "tok1", now=0.0).split(".")[1]
    with pytest.raises(AuthError, match="not issued by this run"):
        signer.verify(f"{version}.{forged}.{mac}", now=1.0)
    with pytest.raises(AuthError, match="not issued by this run"):
        SessionSigner(b"t" * 32, ttl_s=100.0).verify(token, now=1.0)
    for bad in ("", "v1.abc", "v2." + payload + "." + mac, "v1.!!!.???", "x" * 1000):
        with pytest.raises(AuthError, match="malformed"):
            signer.verify(bad, now=1.0)


def test_rate_limiter_exact_budget():
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.acquire("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", 0.0) == pytest.approx(0.5)
    assert limiter.acquire("b", 0.0) == 0.0  # keys are independent
    assert limiter.acquire("a", 0.5) == 0.0  # one token refilled after 0.5 s
    assert limiter.acquire("a", 0.5) == pytest.approx(0.5)
    assert limiter.acquire("a", 100.0) == 0.0
    assert [limiter.acquire("a", 100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_rate_limiter_forgets_idle_keys_at_capacity():
    limiter = RateLimiter(rate_per_s=1.0, burst=2, max_keys=2)
    limiter.acquire("a", 0.0)
    limiter.acquire("b", 0.0)
    limiter.acquire("c", 5.0)  # a and b are full again after 2 s: forgotten
    assert len(limiter) == 1
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(rate_per_s=0.0, burst=1)

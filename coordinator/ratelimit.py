# SPDX-License-Identifier: AGPL-3.0-or-later
"""Per-key token-bucket rate limiting (keys: peer ids, or client addresses before Join)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_KEYS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Each key may make ``rate_per_s`` calls per second on average and ``burst`` calls at once.

    Tuning: the rate should cover a peer's normal traffic several times over (a heartbeat every few
    seconds plus progress and metrics reports is well under 1 call/s); too low and honest peers get
    RESOURCE_EXHAUSTED, too high and one misbehaving peer can crowd out the others. ``max_keys``
    bounds memory: when more keys are tracked, full (idle) buckets are forgotten.
    """

    def __init__(self, *, rate_per_s: float, burst: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s={rate_per_s} must be > 0 and burst={burst} >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, now: float) -> float:
        """Take one call for ``key`` at time ``now`` (monotonic seconds): 0.0 if allowed, else the
        seconds to wait until a call would be allowed."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate_per_s
        for key in [k for k, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

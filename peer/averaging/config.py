# SPDX-License-Identifier: AGPL-3.0-or-later
"""Timeouts and input limits of the averaging layer, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

FP32_BYTES_PER_VALUE = 4.0


@dataclass(frozen=True, kw_only=True)
class AveragingConfig:
    """Every timeout (seconds) and size limit (bytes) of one peer's averaging layer.

    Tuning (measured on loopback, see /work/shared/notes/hivemind-facts.md):

    - ``matchmaking_time``: how long a peer waits after announcing itself before electing a leader. Peers
      that reach the outer step within this window average together. Too short (< 1 s on a busy machine)
      and groups fragment: peers see different candidate sets and several sit out; too long and every
      outer step waits for nothing. 3–5 s from 6 peers up on 2 cores; 1.5–2 s is enough for 2–3 peers.
    - ``join_timeout``: how long the leader keeps its group open for joiners it has seen announced, and how
      long a member waits for the leader's answer beyond that. Too short and slow members are left out.
    - ``request_timeout``: opening a stream and exchanging a small message. About 1 s on loopback; raise
      it for peers across continents. Too small makes healthy peers look dead.
    - ``part_timeout``: after the group is fixed, an owner waits this long for the contributions to its
      part, then aggregates whatever arrived; a contributor that misses it is dropped for that part.
      It must cover encoding plus the transfer of one part: at 10 M fp32 parameters and 2 peers that is
      20 MB, well under a second on loopback but ~2 s on a 100 Mbit/s link.
    - ``result_timeout``: how long a member waits for an owner's aggregate beyond ``part_timeout``. Too
      short and a slow owner's part is reported failed though it was coming.
    - ``max_group_size``: the leader admits at most this many members (itself included); the rest sit
      the round out. Large groups mean many small parts and many streams.
    - ``max_leader_attempts``: when the elected leader refuses, is unreachable or is not authorized, a
      member moves to the next smallest candidate, at most this many times.
    - ``max_credential_bytes`` / ``max_header_bytes``: a frame whose credential or JSON header is larger
      is refused before it is read.
    - ``max_bytes_per_value`` and ``payload_overhead_bytes``: a part payload for ``n`` values may be at most
      ``ceil(max_bytes_per_value * n) + payload_overhead_bytes`` bytes. The default allows raw fp32
      plus a codec header; no sane codec is bigger, so a larger payload is an attack or a bug.
    """

    matchmaking_time: float = 3.0
    join_timeout: float = 2.0
    request_timeout: float = 1.0
    part_timeout: float = 10.0
    result_timeout: float = 10.0
    max_group_size: int = 64
    max_leader_attempts: int = 3
    max_credential_bytes: int = 4096
    max_header_bytes: int = 65536
    max_bytes_per_value: float = FP32_BYTES_PER_VALUE
    payload_overhead_bytes: int = 65536

    def __post_init__(self) -> None:
        for name in ("matchmaking_time", "join_timeout", "request_timeout", "part_timeout", "result_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"AveragingConfig.{name} must be a positive number of seconds, got {value!r}"
                )
        for name in ("max_group_size", "max_leader_attempts", "max_credential_bytes", "max_header_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"AveragingConfig.{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.max_bytes_per_value) and self.max_bytes_per_value > 0):
            raise ValueError(
                f"AveragingConfig.max_bytes_per_value must be positive, got {self.max_bytes_per_value!r}"
            )
        if not (isinstance(self.payload_overhead_bytes, int) and self.payload_overhead_bytes >= 0):
            raise ValueError(
                "AveragingConfig.payload_overhead_bytes must be an integer >= 0, "
                f"got {self.payload_overhead_bytes!r}"
            )

    def max_part_payload(self, numel: int) -> int:
        """Largest encoded part of ``numel`` values accepted from a peer."""
        return math.ceil(self.max_bytes_per_value * numel) + self.payload_overhead_bytes

    @property
    def allreduce_deadline(self) -> float:
        """Longest time the all-reduce phase of a round may take once the group is fixed."""
        return self.part_timeout + self.result_timeout

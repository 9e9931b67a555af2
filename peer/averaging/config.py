# SPDX-License-Identifier: AGPL-3.0-or-later
"""Timeouts and input limits of the averaging layer and of state sync, checked on construction
(the project's config style, :mod:`lila_net.config.section`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lila_net.config import DilocoSection, Section, setting
from lila_net.credentials import MAX_CREDENTIAL_BYTES

FP32_BYTES_PER_VALUE = 4.0
GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class AveragingConfig(Section):
    """Every timeout (seconds) and size limit (bytes) of one peer's averaging layer.

    - ``matchmaking_time``: how long a peer waits after announcing itself before electing a leader. Peers
      that reach the outer step within this window average together. Too short (under a second on a busy
      machine) and groups fragment: peers see different candidate sets and several sit out; too long and
      every outer step waits for nothing. Raise it with the number of peers and the load of their
      machines (``python -m bench.averaging`` measures rounds at several group sizes).
    - ``join_timeout``: how long the leader keeps its group open for joiners it has seen announced, and how
      long a member waits for the leader's answer beyond that. Too short and slow members are left out.
    - ``request_timeout``: opening a stream and exchanging a small message; raise it for peers across
      continents. Too small makes healthy peers look dead.
    - ``part_timeout``: after the group is fixed, an owner waits this long for the contributions to its
      part, then aggregates whatever arrived; a contributor that misses it is dropped for that part.
      It must cover encoding plus the transfer of one part over the slowest member's link (a part is
      about the encoded pseudo-gradient divided by the group size).
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

    section = "averaging"
    matchmaking_time: float = setting(DilocoSection.matchmaking_time_s, gt=0)
    join_timeout: float = setting(2.0, gt=0)
    request_timeout: float = setting(1.0, gt=0)
    part_timeout: float = setting(10.0, gt=0)
    result_timeout: float = setting(10.0, gt=0)
    max_group_size: int = setting(64, ge=1)
    max_leader_attempts: int = setting(3, ge=1)
    max_credential_bytes: int = setting(MAX_CREDENTIAL_BYTES, ge=1)
    max_header_bytes: int = setting(65536, ge=1)
    max_bytes_per_value: float = setting(FP32_BYTES_PER_VALUE, gt=0)
    payload_overhead_bytes: int = setting(65536, ge=0)

    @classmethod
    def for_run(cls, diloco: DilocoSection) -> AveragingConfig:
        """The run's timeouts: matchmaking gets ``matchmaking_time_s`` and the all-reduce the rest of
        ``averaging_timeout_s`` (half to collect the parts, half to wait for the results), so a round whose
        matchmaking goes well ends within ``averaging_timeout_s`` even when a member dies in it."""
        exchange = (diloco.averaging_timeout_s - diloco.matchmaking_time_s) / 2
        return cls(matchmaking_time=diloco.matchmaking_time_s, part_timeout=exchange, result_timeout=exchange)

    def max_part_payload(self, numel: int) -> int:
        """Largest encoded part of ``numel`` values accepted from a peer."""
        return math.ceil(self.max_bytes_per_value * numel) + self.payload_overhead_bytes

    @property
    def allreduce_deadline(self) -> float:
        """Longest time the all-reduce phase of a round may take once the group is fixed."""
        return self.part_timeout + self.result_timeout


@dataclass(frozen=True, kw_only=True)
class StateSyncConfig(Section):
    """Tuning of state serving and download.

    - ``announce_period``: a donor re-announces itself this often; its record lives 3 periods, so a donor
      that died stays listed that long (the downloader then just moves on). Much shorter loads the DHT,
      much longer lists dead donors for minutes.
    - ``max_upload_bytes_per_s``: cap on the upload rate when serving (None = unlimited). A volunteer on a
      slow uplink sets it so serving state does not starve their own averaging traffic.
    - ``request_timeout``: opening a stream and getting the table back.
    - ``chunk_timeout``: a donor that sends nothing for this long is abandoned for the next one. Too small
      drops donors on a congested link; too large waits long for a vanished donor.
    - ``total_timeout``: the whole download, all donors together.
    - ``max_state_bytes`` / ``max_table_bytes``: larger announcements are refused unread. Set the first to
      the expected state size plus a margin (the global parameters and outer momentum in fp32: 8 bytes
      per parameter).
    """

    section = "state_sync"
    announce_period: float = setting(10.0, gt=0)
    max_upload_bytes_per_s: float | None = setting(None, gt=0)
    request_timeout: float = setting(5.0, gt=0)
    chunk_timeout: float = setting(10.0, gt=0)
    total_timeout: float = setting(600.0, gt=0)
    max_state_bytes: int = setting(32 * GIB, ge=1)
    max_table_bytes: int = setting(16 * MIB, ge=1)
    max_credential_bytes: int = setting(MAX_CREDENTIAL_BYTES, ge=1)

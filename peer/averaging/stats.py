# SPDX-License-Identifier: AGPL-3.0-or-later
"""Byte counters of one averaging round (everything this peer wrote to and read from its streams)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ByteCounter:
    sent: int = 0
    received: int = 0

    def add(self, received: int, sent: int) -> None:
        """Count one exchange; the argument order matches ``rpc.Reply.account(received, sent)``."""
        self.received += received
        self.sent += sent


FP32_BYTES = 4


def fp32_round_bytes(numel: int, group_size: int) -> int:
    """What this peer would send in one round of ``group_size`` with uncompressed fp32 payloads: its
    contributions to the other N − 1 part owners plus, as the owner of one part, that part's aggregate to
    each of them: 2 · (N − 1)/N · ``numel`` values (frames and credentials not counted). The reference
    for the compression ratio of what a ``ByteCounter`` counted as sent."""
    if group_size < 2:
        return 0
    return 2 * FP32_BYTES * numel * (group_size - 1) // group_size

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

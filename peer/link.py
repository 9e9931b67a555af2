# SPDX-License-Identifier: AGPL-3.0-or-later
"""This peer's link to the others, as measured: upload and download rates, and the round deadline they imply.

Every averaging round and every state download is a measurement: bytes moved ÷ seconds spent. The rates
are lower bounds (a round also waits for the slowest member), kept as an exponential moving average
(``SMOOTHING``), and only transfers of at least ``MIN_SAMPLE_BYTES`` count (small ones measure latency,
not bandwidth). They go to ``/metrics`` and the coordinator's status page.

:func:`exchange_timeout` turns them into the all-reduce deadline of the next round: the bytes the last
round moved ÷ the measured rate × ``SAFETY``, never below the run's own timeout. A fixed deadline that fits
a 1 Gbit/s test host fails every round on a 5 Mbit/s home uplink (20 M parameters at 4 bits are ~10 MB per
round per peer: 16 s at 5 Mbit/s); one that fits 5 Mbit/s lets a dead peer stall a fast network for
minutes. Raise ``SAFETY`` when rounds on a shared link end in timeouts although every peer is alive; the
benchmark ``python -m bench.internet`` reports round time against bytes ÷ rate for 100, 20 and 5 Mbit/s.
"""

from __future__ import annotations

import threading

SMOOTHING = 0.5  # weight of the newest sample
MIN_SAMPLE_BYTES = 256 * 1024
SAFETY = 3.0


class LinkMeter:
    """Measured upload/download rates in bytes per second (0.0 until a large enough transfer was seen)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.uplink_bytes_per_s = 0.0
        self.downlink_bytes_per_s = 0.0
        self.last_round_bytes = 0

    def observe(self, *, sent: int, received: int, seconds: float) -> None:
        """Record a transfer of ``sent`` and ``received`` bytes that took ``seconds``."""
        if seconds <= 0:
            return
        with self._lock:
            if sent >= MIN_SAMPLE_BYTES:
                self.uplink_bytes_per_s = _blend(self.uplink_bytes_per_s, sent / seconds)
            if received >= MIN_SAMPLE_BYTES:
                self.downlink_bytes_per_s = _blend(self.downlink_bytes_per_s, received / seconds)

    def observe_round(self, *, sent: int, received: int, seconds: float) -> None:
        """Record an averaging round's exchange (also remembered as the size of the next one)."""
        self.observe(sent=sent, received=received, seconds=seconds)
        if sent or received:
            self.last_round_bytes = max(sent, received)


def _blend(old: float, new: float) -> float:
    return new if old <= 0 else (1 - SMOOTHING) * old + SMOOTHING * new


def exchange_timeout(base_s: float, meter: LinkMeter, *, safety: float = SAFETY) -> float:
    """The all-reduce deadline (each of its two halves) for the next round: ``base_s``, or the last round's
    bytes at the slower measured rate × ``safety`` when that is longer."""
    rates = [r for r in (meter.uplink_bytes_per_s, meter.downlink_bytes_per_s) if r > 0]
    if not rates or not meter.last_round_bytes:
        return base_s
    return max(base_s, meter.last_round_bytes / min(rates) * safety)

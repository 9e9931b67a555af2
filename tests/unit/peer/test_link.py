# SPDX-License-Identifier: AGPL-3.0-or-later
"""The measured link and the all-reduce deadline it implies (peer.link)."""

from __future__ import annotations

from peer.link import MIN_SAMPLE_BYTES, SAFETY, SMOOTHING, LinkMeter, exchange_timeout

MB = 1_000_000


def test_small_transfers_do_not_count_and_rates_are_smoothed():
    meter = LinkMeter()
    meter.observe(sent=MIN_SAMPLE_BYTES - 1, received=MIN_SAMPLE_BYTES - 1, seconds=0.001)
    assert (meter.uplink_bytes_per_s, meter.downlink_bytes_per_s) == (0.0, 0.0)
    meter.observe(sent=4 * MB, received=0, seconds=2.0)
    assert meter.uplink_bytes_per_s == 2 * MB and meter.downlink_bytes_per_s == 0.0
    meter.observe(sent=4 * MB, received=8 * MB, seconds=1.0)
    assert meter.uplink_bytes_per_s == (1 - SMOOTHING) * 2 * MB + SMOOTHING * 4 * MB
    assert meter.downlink_bytes_per_s == 8 * MB
    meter.observe(sent=4 * MB, received=4 * MB, seconds=0.0)  # no time: no sample
    assert meter.downlink_bytes_per_s == 8 * MB


def test_the_deadline_follows_the_bytes_of_the_last_round_and_the_slower_direction():
    meter = LinkMeter()
    assert exchange_timeout(9.0, meter) == 9.0  # nothing measured: the run's timeout
    # A 5 Mbit/s uplink (625 kB/s) moving 10 MB per round: 16 s per exchange, ×SAFETY.
    meter.observe_round(sent=10 * MB, received=10 * MB, seconds=16.0)
    assert meter.last_round_bytes == 10 * MB
    assert exchange_timeout(9.0, meter) == 10 * MB / (10 * MB / 16.0) * SAFETY == 48.0
    # A fast link never lowers the deadline below the run's own.
    fast = LinkMeter()
    fast.observe_round(sent=10 * MB, received=10 * MB, seconds=0.1)
    assert exchange_timeout(9.0, fast) == 9.0

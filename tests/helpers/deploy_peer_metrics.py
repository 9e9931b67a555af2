# SPDX-License-Identifier: AGPL-3.0-or-later
"""A peer's real metrics registry (peer.metrics.PeerMetrics) served over HTTP with known values.

Used by tests/integration/test_deploy_prometheus.py as the "running peer" Prometheus scrapes: a full `lila-peer join`
trains a model, which is too slow for a test on two shared cores. It writes ``{"port": N}`` to
``--ready`` once serving, then serves until SIGTERM/SIGINT or ``--timeout-s``.

    python tests/helpers/deploy_peer_metrics.py --ready /tmp/ready.json --timeout-s 120
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from peer.metrics import PeerMetrics

LAYER = "blocks.0.attn.qkv"
# Values the test expects to read back through Prometheus.
GAUGES = {
    "tokens_per_second": 512.0,
    "loss": 3.25,
    "geo_loss": 0.125,
    "learning_rate": 0.003,
    "outer_step": 7.0,
    "group_size": 2.0,
    "compression_ratio": 7.5,
    "codec_relative_error": 0.04,
    "val_bpb": 1.75,
}
TOKENS = 4096
BYTES_SENT = 1000
BYTES_RECEIVED = 2000
ROUNDS_OK = 3
ROUND_SECONDS = 1.5
STABLE_RANK = 12.5
CONDITION_NUMBER = 40.0


def populated_metrics() -> PeerMetrics:
    """A PeerMetrics with every metric given a known value."""
    metrics = PeerMetrics()
    for attribute, value in GAUGES.items():
        getattr(metrics, attribute).set(value)
    metrics.tokens_total.inc(TOKENS)
    metrics.bytes_sent.inc(BYTES_SENT)
    metrics.bytes_received.inc(BYTES_RECEIVED)
    metrics.rounds_total.labels(outcome="ok").inc(ROUNDS_OK)
    metrics.round_seconds.observe(ROUND_SECONDS)
    metrics.stable_rank.labels(layer=LAYER).set(STABLE_RANK)
    metrics.condition_number.labels(layer=LAYER).set(CONDITION_NUMBER)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready", required=True, type=Path, help="write {'port': N} here once serving")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="exit after this long regardless")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics = populated_metrics()
    port = metrics.serve(host=args.host, port=0)
    tmp = args.ready.with_name(args.ready.name + ".tmp")
    tmp.write_text(json.dumps({"port": port}))
    tmp.replace(args.ready)
    stop.wait(args.timeout_s)
    metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

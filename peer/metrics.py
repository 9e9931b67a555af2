# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's Prometheus metrics, in a registry of its own (nothing global), served on ``--metrics-port``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

ROUND_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass
class PeerMetrics:
    """Every metric a peer exports. Names start with ``lila_peer_``; labels stay low-cardinality."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._server: Any = None  # the /metrics HTTP server once serve() ran
        r = self.registry
        self.tokens_total = Counter("lila_peer_tokens", "Training tokens processed by this peer", registry=r)
        self.tokens_per_second = Gauge("lila_peer_tokens_per_second", "Inner-loop training throughput", registry=r)
        self.loss = Gauge("lila_peer_loss", "Cross-entropy of the last inner step (nats/token)", registry=r)
        self.geo_loss = Gauge("lila_peer_geo_loss", "Resonance (geometric) loss of the last inner step", registry=r)
        self.learning_rate = Gauge("lila_peer_learning_rate", "Inner learning rate of the last step", registry=r)
        self.outer_step = Gauge("lila_peer_outer_step", "Outer (DiLoCo) step this peer has completed", registry=r)
        self.round_seconds = Histogram("lila_peer_round_duration_seconds", "Duration of averaging rounds",
                                       buckets=ROUND_SECONDS_BUCKETS, registry=r)
        self.group_size = Gauge("lila_peer_group_size", "Peers in the last averaging group", registry=r)
        self.rounds_total = Counter("lila_peer_rounds", "Averaging rounds by outcome", ["outcome"], registry=r)
        self.bytes_sent = Counter("lila_peer_bytes_sent", "Averaging payload bytes sent", registry=r)
        self.bytes_received = Counter("lila_peer_bytes_received", "Averaging payload bytes received", registry=r)
        self.compression_ratio = Gauge("lila_peer_compression_ratio",
                                       "bytes an fp32 round would have sent / bytes sent (last round)", registry=r)
        self.codec_relative_error = Gauge("lila_peer_codec_relative_error",
                                          "‖decode(encode(Δ)) − Δ‖ / ‖Δ‖ of the last round", registry=r)
        self.stable_rank = Gauge("lila_peer_layer_stable_rank", "Stable rank ‖W‖²_F/‖W‖²_2 per weight",
                                 ["layer"], registry=r)
        self.condition_number = Gauge("lila_peer_layer_condition_number", "σ_max/σ_min per weight",
                                      ["layer"], registry=r)
        self.resyncs_total = Counter("lila_peer_resyncs",
                                     "State downloads because the network moved on or hashes disagreed",
                                     registry=r)
        self.state_sync_seconds = Gauge("lila_peer_state_sync_seconds", "Duration of the last state download",
                                        registry=r)
        self.link_rate = Gauge("lila_peer_link_bytes_per_second",
                               "Measured rate of this peer's link to the others (a lower bound; see peer.link)",
                               ["direction"], registry=r)
        self.reachability = Gauge("lila_peer_reachability", "1 for how other peers reach this one",
                                  ["mode"], registry=r)
        self.val_bpb = Gauge("lila_peer_val_bpb", "Validation bits per byte of the global parameters", registry=r)

    def serve(self, *, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP; port 0 picks a free port. Returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Prometheus metrics of the coordinator, in a registry of its own (never the global default one).

Run-level gauges come from the latest status snapshot through a custom collector, so a scrape
costs no scheduler work; RPC counters and latency histograms are updated by the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RPC_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        if not snap:
            return
        peers = GaugeMetricFamily("lila_peers", "Peers by state", labels=["state"])
        for state, count in sorted(snap["peers_by_state"].items()):
            peers.add_metric([state], count)
        yield peers
        shards = GaugeMetricFamily("lila_shards", "Shards of the plan by state", labels=["state"])
        for state in ("completed", "leased", "queued", "total"):
            shards.add_metric([state], snap["shards"][state])
        yield shards
        leases = GaugeMetricFamily(
            "lila_leases",
            "Leases held by peers, and shards handed back awaiting a next holder",
            labels=["state"],
        )
        leases.add_metric(["held"], snap["leases_active"])
        leases.add_metric(["returned"], snap["shards"]["queued"])
        yield leases
        yield CounterMetricFamily("lila_tokens", "Tokens credited over the run", value=snap["global_tokens"])
        yield GaugeMetricFamily(
            "lila_tokens_per_second", "Credited tokens per second (last minute)", value=snap["tokens_per_s"]
        )
        yield GaugeMetricFamily("lila_outer_step", "Current outer step", value=snap["outer_step"])
        yield GaugeMetricFamily(
            "lila_stage_index", "Index of the current curriculum stage", value=snap["stage_index"]
        )
        yield GaugeMetricFamily(
            "lila_run_finished", "1 once every stage is done", value=int(snap["finished"])
        )
        progress = GaugeMetricFamily("lila_stage_progress", "Progress of each stage (0-1)", labels=["stage"])
        for stage in snap["stages"]:
            progress.add_metric([stage["name"]], stage["progress"])
        yield progress
        yield GaugeMetricFamily(
            "lila_peers_banned", "Peers banned by the trust policy", value=snap["peers_by_state"].get("banned", 0)
        )
        yield GaugeMetricFamily(
            "lila_peer_strikes",
            "Strikes (rounds with a rejected contribution, confirmed by enough witnesses) over all peers",
            value=snap.get("strikes_total", 0),
        )
        reach = GaugeMetricFamily(
            "lila_peers_reachability",
            "Live peers by how other peers reach them (direct, relayed, client; unknown: not reported)",
            labels=["reachability"],
        )
        for name, count in sorted(snap["live_peers_by_reachability"].items()):
            reach.add_metric([name], count)
        yield reach
        splits = snap["splits"]
        yield CounterMetricFamily(
            "lila_splits",
            "Outer steps after which peers held different parameters (or several trained alone)",
            value=splits["count"],
        )
        yield GaugeMetricFamily(
            "lila_params_hashes",
            "Distinct parameter hashes at the latest outer step two or more peers reported (1: agreement)",
            value=splits["distinct_hashes"],
        )
        if snap["loss"] is not None:
            yield GaugeMetricFamily(
                "lila_loss", "Mean training loss of the latest outer step", value=snap["loss"]
            )
        if snap["val_bpb"] is not None:
            yield GaugeMetricFamily("lila_val_bpb", "Latest validation bits per byte", value=snap["val_bpb"])


class CoordinatorMetrics:
    """The coordinator's metrics; ``render()`` gives the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_requests = Counter(
            "lila_rpc_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            "lila_rpc_latency_seconds",
            "gRPC call latency",
            ["method"],
            buckets=RPC_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "lila_event_loop_lag_seconds",
            "How late the event loop ran a timer (time every call waits before its handler starts)",
            buckets=LOOP_LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.strike_reports = Counter(
            "lila_strike_reports",
            "Evidence entries of ReportStrike naming an admitted peer",
            registry=self.registry,
        )
        self.strikes = Counter(
            "lila_strikes", "Strikes counted against peers (enough witnesses for a round)", registry=self.registry
        )
        self._snapshot = _SnapshotCollector()
        self.registry.register(self._snapshot)

    def set_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Serve run-level gauges from ``snapshot`` (a :func:`coordinator.status.build_snapshot` dict)."""
        self._snapshot.snapshot = snapshot

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one call and its latency."""
        self.rpc_requests.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def observe_strikes(self, *, reports: int, strikes: int) -> None:
        """Count strike evidence entries and the strikes they completed."""
        self.strike_reports.inc(reports)
        self.strikes.inc(strikes)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Following the peers of a running network: their Prometheus ``/metrics`` sampled in a thread (addresses
from the coordinator's ``/api/status``), their diaries (``outer-steps.jsonl``, peer/events.py), and the
reduction of one peer's diary and samples to the figures the report uses."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_INTERVAL_S = 2.0  # a scrape costs the peer a little CPU: sample, do not watch
STATUS_INTERVAL_S = 1.0
HTTP_TIMEOUT_S = 2.0
OUTER_STEPS_FILE = "outer-steps.jsonl"
STATE_SYNC_LOG = re.compile(r"downloaded state at outer step (\d+) in ([0-9.]+) s")
# Everything else comes from the peers' diaries (outer-steps.jsonl).
WANTED_SAMPLES = ("lila_peer_tokens_total", "lila_peer_tokens_per_second", "lila_peer_codec_relative_error")


def parse_metrics(text: str) -> dict[str, float]:
    """The peer samples the bench uses, keyed ``name`` or ``name{label=value,...}``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in WANTED_SAMPLES:
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def http_get(url: str) -> bytes | None:
    """The body at ``url``, or None when it cannot be read within ``HTTP_TIMEOUT_S``."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.read()
    except (OSError, ValueError):
        return None
@dataclass
class Sample:
    t: float
    values: dict[str, float]


class Watcher:
    """Samples every peer's /metrics (addresses learned from the coordinator's /api/status) in a thread."""

    def __init__(self, *, status_url: str, interval_s: float = SCRAPE_INTERVAL_S) -> None:
        self.status_url = status_url
        self.interval_s = interval_s
        self.addresses: dict[str, str] = {}
        self.series: dict[str, list[Sample]] = {}
        self.last_status: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-watcher", daemon=True)
        self._next_status = 0.0

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * HTTP_TIMEOUT_S)

    def refresh_status(self) -> dict[str, Any] | None:
        body = http_get(self.status_url)
        if body is None:
            return None
        try:
            status = json.loads(body)
        except ValueError:
            return None
        self.last_status = status
        for peer in status.get("peers", []):
            if peer.get("metrics_address"):
                self.addresses[peer["name"]] = peer["metrics_address"]
        return status

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= self._next_status:
                self.refresh_status()
                self._next_status = now + STATUS_INTERVAL_S
            for name, address in list(self.addresses.items()):
                body = http_get(f"http://{address}/metrics")
                if body is None:
                    continue
                try:
                    values = parse_metrics(body.decode())
                except ValueError:
                    continue
                self.series.setdefault(name, []).append(Sample(time.monotonic(), values))
            self._stop.wait(self.interval_s)


def read_diary(path: Path) -> list[dict[str, Any]]:
    """A peer's ``outer-steps.jsonl`` events (peer/events.py); empty when the file is missing."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a killed peer
    return events


@dataclass
class PeerStats:
    """What one peer did, from its diary (times: unix seconds) and its /metrics samples.

    An outer cycle runs from one ``outer_step`` event to the next: the inner period (plus the wait at
    the round barrier), the averaging round, then the after-round work (verification, state publishing,
    reports, evaluation, checkpoint) that ends with the next ``outer_step`` event.
    """

    name: str
    join_to_first_step_s: float | None  # from the creation of the `lila-peer join` process
    outer_steps: int
    cycle_tokens: int
    cycle_seconds: float
    rounds: dict[str, int]
    bytes_sent: list[int]  # per applied round with a group of 2 or more
    bytes_received: list[int]
    round_s: list[float]
    matchmaking_s: list[float]
    allreduce_s: list[float]
    inner_s: list[float]  # outer_step(k-1) -> round_start(k): inner steps + barrier
    after_s: list[float]  # round(k) -> outer_step(k): verify, publish, report, evaluate, checkpoint
    group_sizes: list[int]
    resyncs: int
    hashes: dict[int, str]
    curve: list[tuple[int, float]]  # (outer step, val bpb) the peer reported itself (none with --eval-every 0)
    phases: dict[str, list[float]] = field(default_factory=dict)  # after-round phase -> seconds per outer step
    step_seconds: float = 0.0  # of cycle_seconds, inside optimizer steps (the peer's own timing)
    step_tokens_per_s: float | None = None
    codec_relative_error: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens over whole outer cycles: the peer's training rate inside the network."""
        return self.cycle_tokens / self.cycle_seconds if self.cycle_seconds > 0 else None

    @property
    def in_steps_fraction(self) -> float | None:
        """Share of the cycles' wall time spent inside optimizer steps: utilization without the host's
        speed drift (a peer that never waited would be at ~1)."""
        return self.step_seconds / self.cycle_seconds if self.cycle_seconds > 0 and self.step_seconds else None

    @property
    def bytes_per_outer_step(self) -> float | None:
        return statistics.median(self.bytes_sent) if self.bytes_sent else None


def peer_stats(name: str, events: list[dict[str, Any]], samples: list[Sample]) -> PeerStats:
    """Reduce one peer's diary and metric samples."""
    first = next((e for e in events if e.get("event") == "first_step"), None)
    steps = [e for e in events if e.get("event") == "outer_step"]
    rounds = [e for e in events if e.get("event") == "round"]
    starts = {e["round"]: e for e in events if e.get("event") == "round_start"}
    by_round = {e["round"]: e for e in rounds}
    stats = PeerStats(
        name=name, join_to_first_step_s=first.get("process_seconds", first.get("seconds")) if first else None,
        outer_steps=len(steps), cycle_tokens=sum(int(e.get("tokens", 0)) for e in steps[1:]),
        cycle_seconds=steps[-1]["t"] - steps[0]["t"] if len(steps) >= 2 else 0.0, rounds={}, bytes_sent=[],
        bytes_received=[], round_s=[], matchmaking_s=[], allreduce_s=[], inner_s=[], after_s=[],
        group_sizes=sorted({int(e.get("group_size", 0)) for e in rounds}),
        resyncs=sum(1 for e in events if e.get("event") == "state" and e.get("source") == "resync"),
        hashes={int(e["outer_step"]): e.get("params_sha256", "") for e in steps},
        curve=[(int(e["outer_step"]), float(e["val_bpb"])) for e in events
               if e.get("event") in ("state", "outer_step") and e.get("val_bpb") is not None],
    )
    for e in rounds:
        stats.rounds[e["status"]] = stats.rounds.get(e["status"], 0) + 1
        if e.get("applied") and int(e.get("group_size", 0)) > 1:
            stats.bytes_sent.append(int(e["bytes_sent"]))
            stats.bytes_received.append(int(e["bytes_received"]))
            stats.round_s.append(float(e["seconds"]))
            stats.matchmaking_s.append(float(e.get("matchmaking_s", 0.0)))
            stats.allreduce_s.append(float(e.get("allreduce_s", 0.0)))
    for step in steps:
        for phase, seconds in (step.get("phases") or {}).items():
            stats.phases.setdefault(phase, []).append(float(seconds))
    stats.step_seconds = sum(float(e.get("step_s", 0.0)) for e in steps[1:])  # the periods of cycle_tokens
    for previous, current in itertools.pairwise(steps):
        k = int(current["outer_step"])
        if k in starts:
            stats.inner_s.append(starts[k]["t"] - previous["t"])
        if k in by_round:
            stats.after_s.append(current["t"] - by_round[k]["t"])
    rates = [s.values["lila_peer_tokens_per_second"] for s in samples
             if s.values.get("lila_peer_tokens_per_second", 0) > 0]
    errors = [s.values["lila_peer_codec_relative_error"] for s in samples
              if "lila_peer_codec_relative_error" in s.values]
    stats.step_tokens_per_s = statistics.median(rates) if rates else None
    # the gauge holds the last round's error: its median over the run's samples
    stats.codec_relative_error = statistics.median(errors) if errors else None
    return stats


def state_sync_from(events: list[dict[str, Any]], log: Path) -> dict[str, Any] | None:
    """A joiner's first state download: its diary event, else its log line."""
    for event in events:
        if event.get("event") == "state_sync":
            return {"seconds": float(event["seconds"]), "bytes": event.get("bytes"), "source": event.get("source")}
    if log.is_file():
        match = STATE_SYNC_LOG.search(log.read_text(errors="replace"))
        if match:
            return {"seconds": float(match.group(2)), "bytes": None, "source": "log"}
    return None

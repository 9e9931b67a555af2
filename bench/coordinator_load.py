# SPDX-License-Identifier: AGPL-3.0-or-later
"""Coordinator load: N simulated peers heartbeating and leasing over real gRPC.

A real ``lila-coordinator serve`` process runs on 127.0.0.1 (no DHT) with a synthetic JSON-lines
source large enough that shards never run out. Peers are asyncio gRPC clients, each with its own
channel (its own TCP connection, as real peers have), spread over ``--workers`` processes
(``bench.coordinator_clients``). Each peer joins, then every ``--interval`` seconds (with a random phase)
sends a Heartbeat, and every ``--lease-every``-th beat also one lease-cycle call (LeaseShard, then
ReportProgress, then CompleteShard on later beats). Latency is measured client-side around each call, in
a window that starts after every peer joined and ran one interval.

    python -m bench.coordinator_load --quick --out coordinator.json
    python -m bench.coordinator_load --peers 100 1000 3000 --duration 60

Prints a table and writes ``{"runs": [{"peers", "rpc_per_s", "p50_ms", "p99_ms", ...}]}``.
Target on a 2-core machine: 1,000 peers heartbeating every 2 s with p99 < 50 ms.

Besides the client-side latencies, each run reads the coordinator's own /metrics before and after
the window: ``server_p99_ms_at_most`` (handler time, as a histogram bucket bound) and
``server_loop_lag_*`` (how late its event loop ran timers). When those stay small while the
client-side p99 is large, the delay is outside the coordinator (client processes or the OS
scheduler starved of CPU); ``load_average_1m`` and the CPU columns show how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.coordinator_clients import worker
from lila_data.tokenizer import DEFAULT_TOKENIZER
from lila_net.config import RunConfig
from lila_run.harness import LocalCoordinator, small_run, write_run_config

REPO = Path(__file__).resolve().parents[1]  # the coordinator process imports from here

DOCS = 40_000
DOCS_PER_SHARD = 2
DEFAULT_PEERS = (100, 1000)
DEFAULT_WORKERS = 4
DEFAULT_INTERVAL_S = 2.0
DEFAULT_LEASE_EVERY = 5
FULL_DURATION_S = 40.0
QUICK_DURATION_S = 12.0


def run_config(*, data: Path, interval: float) -> RunConfig:
    """One stage whose budget is never reached over ``data``; peers heartbeat every ``interval`` s."""
    return small_run(
        name="bench-coordinator",
        sources={"synthetic": f"jsonl:{data}"},
        stage={"tokens": 1_000_000_000_000},
        # the run's default tokenizer, as the bench always sent it (simulated peers never tokenize)
        data={"docs_per_shard": DOCS_PER_SHARD, "tokenizer": DEFAULT_TOKENIZER},
        coordinator={"heartbeat_interval_s": interval, "lease_timeout_s": 120.0, "rate_limit_per_s": 50.0,
                     "rate_limit_burst": 100, "status_refresh_s": 2.0},
    )


def _server_histogram(http: str, name: str = "lila_rpc_latency_seconds") -> dict[float, float]:
    """Cumulative counts of a server-side histogram (summed over labels) from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _histogram_quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bucket bound (ms) below which a fraction ``q`` of the window's calls finished."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * counts[-1]:
            return bound * 1000.0
    return float("inf")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_one(
    peers: int, *, workers: int, duration: float, interval: float, lease_every: int, workdir: Path
) -> dict:
    """Start a fresh coordinator, run ``peers`` simulated peers, return the measured figures."""
    import psutil

    run_dir = Path(tempfile.mkdtemp(prefix=f"peers{peers}-", dir=workdir))
    coordinator = LocalCoordinator(
        config=write_run_config(run_config(data=workdir / "docs.jsonl", interval=interval), run_dir),
        workdir=run_dir,
        extra=["--join-rate-limit", "100000", "--join-rate-burst", "100000"],
        log_level="WARNING",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    token = coordinator.create_token(label="bench")
    try:
        info = coordinator.start()
        join_time = max(5.0, peers / 100.0)
        t_start = time.time() + join_time + interval
        t_end = t_start + duration
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()
        per = [peers // workers + (1 if i < peers % workers else 0) for i in range(workers)]
        procs = []
        first = 0
        for count in per:
            if count:
                p = ctx.Process(
                    target=worker,
                    args=(info["grpc"], token, first, count, t_start, t_end, interval, lease_every, queue),
                    daemon=True,  # never outlive the benchmark
                )
                p.start()
                procs.append(p)
            first += count
        server_ps = psutil.Process(coordinator.proc.pid)
        client_ps = [psutil.Process(p.pid) for p in procs]
        time.sleep(max(0.0, t_start - time.time()))
        for ps in (server_ps, *client_ps):
            ps.cpu_percent(None)
        load_before = os.getloadavg()[0]
        hist_before = _server_histogram(info["http"])
        lag_before = _server_histogram(info["http"], "lila_event_loop_lag_seconds")
        time.sleep(max(0.0, t_end - time.time()))
        hist_after = _server_histogram(info["http"])
        lag_after = _server_histogram(info["http"], "lila_event_loop_lag_seconds")
        server_cpu = server_ps.cpu_percent(None)
        client_cpu = sum(ps.cpu_percent(None) for ps in client_ps)
        load_after = os.getloadavg()[0]
        results = [queue.get(timeout=duration + join_time + 120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        latencies = [x for lat, _ in results for x in lat]
        errors: dict[str, int] = {}
        for _, errs in results:
            for k, v in errs.items():
                errors[k] = errors.get(k, 0) + v
        return {
            "peers": peers,
            "rpc_per_s": len(latencies) / duration,
            "p50_ms": _percentile(latencies, 0.50),
            "p99_ms": _percentile(latencies, 0.99),
            "max_ms": max(latencies) if latencies else float("nan"),
            "calls": len(latencies),
            "errors": errors,
            "server_p50_ms_at_most": _histogram_quantile_ms(hist_before, hist_after, 0.50),
            "server_p99_ms_at_most": _histogram_quantile_ms(hist_before, hist_after, 0.99),
            "server_loop_lag_p99_ms_at_most": _histogram_quantile_ms(lag_before, lag_after, 0.99),
            "server_loop_lag_max_ms_at_most": _histogram_quantile_ms(lag_before, lag_after, 1.0),
            "server_max_ms_at_most": _histogram_quantile_ms(hist_before, hist_after, 1.0),
            "server_cpu_percent": server_cpu,
            "clients_cpu_percent": client_cpu,
            "load_average_1m": max(load_before, load_after),
            "duration_s": duration,
            "interval_s": interval,
            "workers": workers,
        }
    finally:
        coordinator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coordinator_load", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"short runs ({QUICK_DURATION_S:g} s each)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--peers", type=int, nargs="+", default=list(DEFAULT_PEERS))
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="client processes")
    parser.add_argument("--duration", type=float, help="measured seconds per run")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_S, help="heartbeat interval of each peer"
    )
    parser.add_argument(
        "--lease-every", type=int, default=DEFAULT_LEASE_EVERY, help="lease-cycle call every N beats"
    )
    parser.add_argument("--keep", help="keep databases and coordinator logs in this directory")
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_DURATION_S if args.quick else FULL_DURATION_S)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-coordinator-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "docs.jsonl", "w") as f:
            for i in range(DOCS):
                f.write(json.dumps({"id": f"doc{i}", "text": f"synthetic document {i}"}) + "\n")
        print(
            f"{'peers':>6} {'rpc/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'srv p99<=':>9} {'lag p99<=':>9} {'server cpu%':>11} "
            f"{'clients cpu%':>12} {'load':>5} errors"
        )
        for peers in args.peers:
            result = run_one(
                peers,
                workers=args.workers,
                duration=duration,
                interval=args.interval,
                lease_every=args.lease_every,
                workdir=workdir,
            )
            runs.append(result)
            print(
                f"{peers:>6} {result['rpc_per_s']:>8.1f} {result['p50_ms']:>8.2f} {result['p99_ms']:>8.2f} "
                f"{result['max_ms']:>8.1f} {result['server_p99_ms_at_most']:>9.1f} "
                f"{result['server_loop_lag_p99_ms_at_most']:>9.1f} "
                f"{result['server_cpu_percent']:>11.0f} {result['clients_cpu_percent']:>12.0f} "
                f"{result['load_average_1m']:>5.1f} {result['errors'] or '-'}",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

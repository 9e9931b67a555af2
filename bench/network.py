# SPDX-License-Identifier: AGPL-3.0-or-later
"""The decisive measurement: a LILA network on this machine against plain training, same tokens.

All in one run, same model, same data, same token budget (issue 8):

1. plain training in one process (bench/baseline.py, the peer's own InnerTrainer and data readers):
   (a) with the per-peer batch B, (b) with the global batch N×B for every N — the synchronous
   data-parallel equivalent, the fair reference. They run side by side, one thread each;
2. the network (coordinator + N ``lila-peer join`` processes on 127.0.0.1, lila_run.local_network) with
   N = 2 and 4 peers and fp32 pseudo-gradients;
3. the same with the E8 lattice codec at 4 and 2 bits per coordinate.

Layout: every network trains the run's token budget in the same K = 15 outer steps; the run's
``inner_steps`` is H of 4 peers and N peers take H × 4 / N (see :func:`derive_layout`). The Python docs
are sorted by topic, so the bench trains on a copy with shuffled rows (:func:`shuffled_source`).

Per configuration it reports the final validation bits per byte (evaluated here on the checkpoint the
network leaves, with the same texts and evaluator as the baselines) and its ratio to (b) (``bpb_ratio``)
and to (a); the curve of val bpb against tokens, evaluated here after the run on every outer step's
checkpoint of one peer (the peers hold identical parameters; they run with ``--eval-every 0``, because
monitoring is not a cost of taking part and the baselines' throughput excludes it too); each peer's
tokens/s inside the network — tokens over the wall time of whole outer cycles (inner steps, round
barrier, averaging round, verification, state publishing, reports, checkpoint) — divided by the tokens/s
of the same process setup (model, batch, torch threads, data reading) training alone with no network,
measured with N such processes side by side right before and right after each network run (this host's
speed drifts by ±20 % within minutes, so a ratio is only fair against measurements next to it)
(``throughput_ratio``, the compute utilization); bytes sent per peer per outer step and the communication
reduction against fp32 per-step data-parallel all-reduce of the same model (the fp32 round's measured
bytes × H / this round's bytes); where a cycle's time goes (inner period, matchmaking, all-reduce,
after-round work, split into ``phases``). It also measures the compressed update's relative error per codec on a real
pseudo-gradient (and inside the network, with error feedback), the time from launching ``lila-peer join``
to the first training step, and a joiner's state download from a running peer for the ``debug`` and
``lila-20m`` presets. Peers are followed through their diaries (``outer-steps.jsonl``, peer/events.py),
their Prometheus ``/metrics`` (sampled every ``SCRAPE_INTERVAL_S``) and the coordinator's ``/api/status``.

    python bench/network.py --quick --out network.json            # ~40 min on 2 idle cores
    python bench/network.py --quick --repeats 2 --out n.json      # run-to-run spread of every network
    python bench/network.py --out network-full.json               # H = 150 / 300, 4.6 M tokens: hours
    python bench/network.py --quick --only 2 --codecs fp32 e8-4   # a subset

Threads: every peer gets ``--threads-per-peer`` (1): 2 peers × 1 thread fill 2 cores, 4 peers
oversubscribe them (reported, but judge utilization on the 2-peer runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# Run as a script, bench/ itself is first on sys.path and bench/coordinator.py would shadow the package.
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (BENCH, REPO))]

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.baseline import (  # noqa: E402
    BaselineResult,
    build_model,
    evaluate,
    single_stage,
    validation_texts,
    with_data,
)
from lila_codec import get_codec  # noqa: E402
from lila_data import load_tokenizer  # noqa: E402
from lila_data.tokenizer import LilaTokenizer  # noqa: E402
from lila_model.checkpoint import load_checkpoint  # noqa: E402
from lila_net.config import RunConfig, load_run_config  # noqa: E402
from lila_run.local_network import LocalNetwork, NetworkOptions  # noqa: E402
from peer.checkpoints import CheckpointCorrupt, CheckpointStore  # noqa: E402

logger = logging.getLogger("bench.network")

PYTHON_DOCS = REPO.parent / "shared" / "data" / "python-docs"
FALLBACK_DATA = "bundled:fineweb-edu-sample"
QUICK_CONFIG = REPO / "runs" / "bench-quick.toml"
FULL_CONFIG = REPO / "runs" / "bench-full.toml"
MIN_OUTER_STEPS = 15  # the issue's floor: fewer outer steps make DiLoCo trail for reasons unrelated to the network
REFERENCE_PEERS = 4  # a bench run's diloco.inner_steps is H of a network of this many peers
PEER_COUNTS = (2, 4)
SCRAPE_INTERVAL_S = 2.0  # a scrape costs the peer a little CPU: sample, do not watch
STATUS_INTERVAL_S = 1.0
HTTP_TIMEOUT_S = 2.0
FP32_BYTES = 4
SYNC_PRESETS = ("debug", "lila-20m")
SYNC_INNER_STEPS = 2  # the provider of a state-sync measurement only needs to finish an outer step
SYNC_BATCH = 1
SYNC_SEQ_LEN = 64
SYNC_VAL_DOCS = 1
SYNC_MATCHMAKING_S = 1.0
SYNC_PROVIDER_STEPS = 1  # outer steps the provider completes before the joiner starts
SYNC_TIMEOUT_S = 600.0
THROUGHPUT_TIMEOUT_S = 600.0
BASELINE_TIMEOUT_S = 4 * 3600.0
NETWORK_SLACK_S = 300.0  # added to the expected duration of a network run before it is stopped
NETWORK_SLOWDOWN_ALLOWED = 4.0  # a run may take this many times its compute estimate before it is stopped
STATE_SYNC_LOG = re.compile(r"downloaded state at outer step (\d+) in ([0-9.]+) s")
CHART_NAME = "network.png"
SHUFFLED_ROW_GROUP = 64  # rows per parquet row group of the shuffled copy (a shard reads whole groups)
# Row order of the shuffled Python docs: with it the first 8 held-out files (validation_max_docs of both
# bench configs) are ~35 K tokens of library, howto and c-api pages, cheap enough to evaluate at every outer
# step. Other seeds put a 50–65 K-token changelog first.
DATA_SEED = 10
OUTER_STEPS_FILE = "outer-steps.jsonl"
LOAD_AVG_WINDOW = 0  # index into os.getloadavg(): the 1-minute average


@dataclass(frozen=True)
class CodecChoice:
    """A [codec] section of the bench runs: ``label`` names it in tables (fp32, e8-4, e8-2)."""

    label: str
    name: str
    bits: int


CODECS = {
    "fp32": CodecChoice("fp32", "fp32", 32),
    "e8-4": CodecChoice("e8-4", "e8", 4),
    "e8-2": CodecChoice("e8-2", "e8", 2),
}
# Codecs whose error on a real pseudo-gradient is compared: (label, name, options beyond the run's block,
# rotation and dither). The Leech codec needs blocks of a multiple of 24 coordinates.
LEECH_BLOCK = 96
ERROR_CODECS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("fp16", "fp16", {}),
    ("int8", "int8", {}),
    ("int4", "int4", {}),
    ("int2", "int", {"bits": 2}),
    ("e8-4", "e8", {"bits": 4}),
    ("e8-2", "e8", {"bits": 2}),
    ("leech-4", "leech", {"bits": 4, "block": LEECH_BLOCK}),
    ("leech-2", "leech", {"bits": 2, "block": LEECH_BLOCK}),
)


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """One bench invocation: which run config, data, peers, codecs and threads."""

    config: Path
    data: str
    peers: tuple[int, ...]
    codecs: tuple[CodecChoice, ...]
    threads_per_peer: int
    baseline_threads: int
    throughput_steps: int
    workdir: Path
    sync_presets: tuple[str, ...]
    evals_per_baseline: int
    error_codecs: tuple[str, ...]
    shuffle: bool = True
    repeats: int = 1


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """The shape every configuration shares: K outer steps, batch B, seq_len T and the token budget;
    H per peer count so that N × H × B × T × K is the budget for every N."""

    outer_steps: int
    batch_size: int
    seq_len: int
    budget: int
    inner_steps: dict[int, int]

    def tokens_per_outer_step(self, peers: int) -> int:
        """Tokens the whole network trains per outer step (every batch full)."""
        return peers * self.inner_steps[peers] * self.batch_size * self.seq_len


def derive_layout(run: RunConfig, peers: tuple[int, ...]) -> Layout:
    """K and H per peer count from a bench run: its ``inner_steps`` is H of a ``REFERENCE_PEERS``-peer
    network, K = budget / (REFERENCE_PEERS × H × B × T), and N peers take H × REFERENCE_PEERS / N inner
    steps, so every N trains the same tokens in the same K outer steps. Refuses a budget or H that does
    not divide evenly, or fewer than ``MIN_OUTER_STEPS`` outer steps (change the stage's ``tokens``)."""
    _, seq_len, _ = single_stage(run)
    budget = run.curriculum.total_tokens
    h, b = run.diloco.inner_steps, run.diloco.batch_size
    per_step = REFERENCE_PEERS * h * b * seq_len
    if budget % per_step:
        raise ValueError(f"the budget {budget} tokens is not a whole number of outer steps of {REFERENCE_PEERS} "
                         f"peers ({per_step} tokens each); set the stage's tokens to a multiple of {per_step}")
    outer = budget // per_step
    if outer < MIN_OUTER_STEPS:
        raise ValueError(f"the budget gives only {outer} outer steps; the bench needs >= {MIN_OUTER_STEPS}: "
                         "raise the stage's tokens or lower inner_steps/batch_size")
    inner: dict[int, int] = {}
    for n in peers:
        if (REFERENCE_PEERS * h) % n:
            raise ValueError(f"{n} peers cannot split {REFERENCE_PEERS} × H = {REFERENCE_PEERS * h} inner steps "
                             "evenly; choose an inner_steps that they divide")
        inner[n] = REFERENCE_PEERS * h // n
    return Layout(outer_steps=outer, batch_size=b, seq_len=seq_len, budget=budget, inner_steps=inner)


def network_run_config(run: RunConfig, codec: CodecChoice, peers: int, *, inner_steps: int) -> RunConfig:
    """The bench run for one configuration: codec section and H replaced, a name of its own."""
    section = replace(run.codec, name=codec.name, bits=codec.bits if codec.name == "e8" else run.codec.bits)
    return replace(run, run=replace(run.run, name=f"{run.run.name}-{peers}p-{codec.label}"), codec=section,
                   diloco=replace(run.diloco, inner_steps=inner_steps))


def sync_run_config(run: RunConfig, preset: str) -> RunConfig:
    """A run that only has to reach an outer step quickly: tiny batches, one short validation text."""
    stage = replace(run.curriculum.stages[0], seq_len=SYNC_SEQ_LEN)
    curriculum = replace(run.curriculum, stages=(stage,))
    diloco = replace(run.diloco, inner_steps=SYNC_INNER_STEPS, batch_size=SYNC_BATCH,
                     matchmaking_time_s=SYNC_MATCHMAKING_S)
    return replace(run, run=replace(run.run, name=f"{run.run.name}-sync-{preset}"),
                   model=replace(run.model, preset=preset), curriculum=curriculum, diloco=diloco,
                   data=replace(run.data, validation_max_docs=SYNC_VAL_DOCS))


# ---------------------------------------------------------------------------------------------- scraping
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


def _get(url: str) -> bytes | None:
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
        body = _get(self.status_url)
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
                body = _get(f"http://{address}/metrics")
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


# ---------------------------------------------------------------------------------------------- processes
def _peer_env() -> None:
    """Peers are ``python -m peer.cli``: make the repo importable for them even when not pip-installed."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), *paths] if p)


def standalone_throughput(config: Path, data: str, *, processes: int, threads: int, steps: int,
                          workdir: Path) -> list[float]:
    """Tokens/s of ``processes`` copies of one peer's process setup training side by side, no network."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        for index in range(processes):
            out = workdir / f"throughput-{processes}x{threads}-{index}.json"
            out.unlink(missing_ok=True)
            argv = [sys.executable, str(BENCH / "baseline.py"), "--config", str(config), "--data", data,
                    "--throughput", "--threads", str(threads), "--steps", str(steps), "--out", str(out)]
            procs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True), out))
        deadline = time.monotonic() + THROUGHPUT_TIMEOUT_S
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rates = []
    for proc, out in procs:
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"standalone throughput process failed (exit {proc.returncode}); run bench/baseline.py "
                               "--throughput by hand to see why")
        rates.append(json.loads(out.read_text())["tokens_per_s"])
    return rates


@dataclass
class NetworkResult:
    """One network configuration's measurements."""

    name: str
    peers: int
    codec: CodecChoice
    outer_steps_target: int
    wall_seconds: float
    exit_codes: list[int | None]
    final_bpb: float | None
    curve: list[tuple[int, float]]  # (tokens of the whole network, val bpb the peers reported)
    stats: list[PeerStats]
    consistent: bool  # every outer step's params_sha256 agreed across the peers that logged it
    load_avg: float = 0.0
    standalone: list[float] = field(default_factory=list)  # tokens/s alone, measured right before and after


def run_network(run: RunConfig, *, codec: CodecChoice, peers: int, layout: Layout, settings: BenchSettings,
                expected_s: float, tokenizer: LilaTokenizer, texts: list[str], repeat: int = 0) -> NetworkResult:
    """Start a coordinator and ``peers`` peers on ``run`` with ``codec``; wait until every peer did its
    outer steps (or a deadline of ``NETWORK_SLOWDOWN_ALLOWED`` × ``expected_s`` + slack), stop
    everything, and measure."""
    name = f"{peers}p-{codec.label}"
    workdir = settings.workdir / (f"{name}-run{repeat + 1}" if settings.repeats > 1 else name)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config_path = workdir / "run.toml"
    config_path.write_text(network_run_config(run, codec, peers, inner_steps=layout.inner_steps[peers]).to_toml())
    target = layout.outer_steps
    # the peers do not evaluate (the curve is measured here afterwards) and keep every outer step's checkpoint
    peer_args = ("--eval-every", "0", "--keep-checkpoints", str(target + 1))
    network = LocalNetwork(NetworkOptions(config=config_path, workdir=workdir, peers=peers, max_outer_steps=target,
                                          threads_per_peer=settings.threads_per_peer, extra_peer_args=peer_args))
    started = time.monotonic()
    watcher: Watcher | None = None
    try:
        ready = network.start_coordinator()
        watcher = Watcher(status_url=f"http://{ready['http']}/api/status").start()
        for index in range(peers):
            network.start_peer(index)
        deadline = expected_s * NETWORK_SLOWDOWN_ALLOWED + NETWORK_SLACK_S
        codes = network.wait_peers(deadline)
        wall = time.monotonic() - started
        if any(code is None for code in codes):
            logger.warning("%s: peers still running after %.0f s; stopping them", name, deadline)
    finally:
        if watcher is not None:
            watcher.stop()
        network.stop()
    roots = [network.peer_workdir(index) / "checkpoints" for index in range(peers)]
    curve = checkpoint_curve(max(roots, key=lambda root: len(list(root.glob("step-*")))), tokenizer=tokenizer,
                             texts=texts, seq_len=layout.seq_len)
    final_bpb = None
    checkpoint = network.collect_checkpoint()  # the newest over all peers, for `lila eval` by hand
    if checkpoint is not None:
        model, extra = load_checkpoint(checkpoint)
        # every peer holds the same parameters at a step: the curve's last point is this step's value
        final_bpb = (curve[-1][1] if curve and curve[-1][0] == extra.get("outer_step")
                     else evaluate(model, tokenizer, texts, seq_len=layout.seq_len))
    names = [f"peer-{index}" for index in range(peers)]
    stats = [peer_stats(peer, read_diary(workdir / peer / OUTER_STEPS_FILE), watcher.series.get(peer, []))
             for peer in names]
    hashes: dict[int, set[str]] = {}
    for peer in stats:
        for step, digest in peer.hashes.items():
            hashes.setdefault(step, set()).add(digest)
    per_step = layout.tokens_per_outer_step(peers)
    return NetworkResult(name=name, peers=peers, codec=codec, outer_steps_target=target, wall_seconds=wall,
                         exit_codes=list(codes), final_bpb=final_bpb,
                         curve=[(step * per_step, bpb) for step, bpb in curve], stats=stats,
                         consistent=all(len(d) == 1 for d in hashes.values()),
                         load_avg=os.getloadavg()[LOAD_AVG_WINDOW])


def checkpoint_curve(root: Path, *, tokenizer: LilaTokenizer, texts: list[str],
                     seq_len: int) -> list[tuple[int, float]]:
    """(outer step, val bpb) of every checkpoint a peer kept under ``root`` that verifies, evaluated like
    the baselines (same texts, evaluator and threads)."""
    store = CheckpointStore(root)
    curve = []
    for path in sorted(root.glob("step-*")):
        try:
            store.verify(path)
        except CheckpointCorrupt as exc:
            logger.warning("not evaluated: %s", exc)
            continue
        model, _ = load_checkpoint(path)
        curve.append((int(path.name.rsplit("-", 1)[-1]), evaluate(model, tokenizer, texts, seq_len=seq_len)))
    return curve


def measure_state_sync(run: RunConfig, preset: str, settings: BenchSettings) -> dict[str, Any]:
    """A joiner downloading the state of a running peer: one provider trains ``SYNC_PROVIDER_STEPS`` outer
    steps of ``preset``, then a second peer joins (and downloads, being behind)."""
    workdir = settings.workdir / f"sync-{preset}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config_path = workdir / "run.toml"
    config_path.write_text(sync_run_config(run, preset).to_toml())
    options = NetworkOptions(config=config_path, workdir=workdir, peers=1, threads_per_peer=settings.threads_per_peer)
    network = LocalNetwork(options)
    result: dict[str, Any] = {"preset": preset}
    try:
        ready = network.start_coordinator()
        network.start_peer(0)
        status_url = f"http://{ready['http']}/api/status"
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while time.monotonic() < deadline and network.peers_running() == 1:
            body = _get(status_url)
            if body is not None and int(json.loads(body).get("outer_step", 0)) >= SYNC_PROVIDER_STEPS:
                break
            time.sleep(STATUS_INTERVAL_S)
        else:
            result["error"] = "the provider never finished an outer step (see peer-0.log)"
            return result
        network.start_peer(1, extra_args=["--max-outer-steps", "1"])
        diary = network.peer_workdir(1) / OUTER_STEPS_FILE
        while time.monotonic() < deadline and network.peers[1].poll() is None:
            events = read_diary(diary)
            if any(e.get("event") == "first_step" for e in events):
                break
            time.sleep(STATUS_INTERVAL_S)
        events = read_diary(diary)
        found = state_sync_from(events, workdir / "peer-1.log")
        if found is None:
            result["error"] = "the joiner did not download the state (see peer-1.log)"
        else:
            result.update(state_sync_s=found["seconds"], bytes=found["bytes"])
        first = next((e for e in events if e.get("event") == "first_step"), None)
        result["join_to_first_step_s"] = first.get("process_seconds") if first else None
        return result
    finally:
        network.stop()
        for index in range(len(network.peers)):  # lila-20m checkpoints are ~0.5 GB each; keep the logs
            shutil.rmtree(network.peer_workdir(index) / "checkpoints", ignore_errors=True)


def run_baselines(config: Path, *, layout: Layout, settings: BenchSettings) -> tuple[dict[str, BaselineResult],
                                                                                   torch.Tensor]:
    """Baselines (a) batch B and (b) batch N×B for every N, as side-by-side processes of
    ``baseline_threads`` threads each (oversubscribed multi-threaded torch on a busy machine crawls).
    Returns the results and (a)'s pseudo-gradient over H steps from the middle of its run."""
    mid_step = layout.budget // (layout.batch_size * layout.seq_len) // 2
    delta_path = settings.workdir / "baseline-a-delta.pt"
    jobs = {"a": layout.batch_size, **{f"b{n}": n * layout.batch_size for n in settings.peers}}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for key, batch in jobs.items():
            out = settings.workdir / f"baseline-{key}.json"
            out.unlink(missing_ok=True)
            argv = [sys.executable, str(BENCH / "baseline.py"), "--config", str(config), "--batch-size", str(batch),
                    "--threads", str(settings.baseline_threads), "--evals", str(settings.evals_per_baseline),
                    "--out", str(out)]
            if key == "a":
                argv += ["--capture-step", str(mid_step), "--capture-h", str(layout.inner_steps[min(settings.peers)]),
                         "--delta-out", str(delta_path)]
            with open(settings.workdir / f"baseline-{key}.log", "wb") as log:
                procs[key] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
                              out)
        deadline = time.monotonic() + BASELINE_TIMEOUT_S
        for proc, _ in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = {}
    for key, (proc, out) in procs.items():
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"baseline ({key}) failed (exit {proc.returncode}); see "
                               f"{settings.workdir / f'baseline-{key}.log'}")
        results[key] = BaselineResult.from_json(json.loads(out.read_text()))
    return results, torch.load(delta_path)


# ---------------------------------------------------------------------------------------------- codec error
def codec_errors(run: RunConfig, delta: torch.Tensor, *, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Relative error, cosine and bits per coordinate of the codecs ``labels`` (of ERROR_CODECS) on one
    real pseudo-gradient."""
    rows = []
    norm = float(delta.norm())
    for label, name, extra in ERROR_CODECS:
        if label not in labels:
            continue
        options: dict[str, Any] = {}
        if name != "fp16":
            block = int(extra.get("block", run.codec.block_size))
            # the largest power of two dividing the block: what the lattice codecs pick for rotation=None
            rotation = block & -block if run.codec.hadamard else 0
            options = {"block": block, "rotation": rotation, "dither": run.codec.dither, **extra}
        codec = get_codec(name, **options)
        started = time.perf_counter()
        payload = codec.encode(delta)
        encode_s = time.perf_counter() - started
        decoded = codec.decode(payload).reshape(-1)  # [numel]
        error = float((decoded - delta).norm()) / norm if norm > 0 else float("nan")
        wide, reference = decoded.double(), delta.double()  # float32 sums over a million terms drift past 1
        cosine = float(wide @ reference / (wide.norm() * reference.norm()))
        rows.append({"codec": label, "bits_per_coord": len(payload) * 8 / delta.numel(), "relative_error": error,
                     "cosine": cosine, "snr_db": -20 * math.log10(error) if error > 0 else float("inf"),
                     "encode_s": encode_s})
    return rows


# ---------------------------------------------------------------------------------------------- report
def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_report(*, layout: Layout, settings: BenchSettings, baselines: dict[str, BaselineResult],
                 networks: list[list[NetworkResult]], standalone: dict[int, list[float]],
                 errors: list[dict[str, Any]], sync: list[dict[str, Any]], params: int,
                 started_load: float) -> dict[str, Any]:
    """The JSON of issue 8 (``configs``, ``join_to_first_step_s``, ``state_sync_s``) plus the details."""
    configs: list[dict[str, Any]] = []
    a = baselines["a"].final_bpb
    for key, res in baselines.items():
        # (a) against each (b) is in the network rows' two ratios; a (b) row is its own reference
        configs.append({"name": f"baseline-{key}", "peers": 1, "bits": 32, "val_bpb": res.final_bpb,
                        "bpb_ratio": 1.0 if key.startswith("b") else None,
                        "bpb_ratio_a": _ratio(res.final_bpb, a), "batch_size": res.batch_size,
                        "tokens": res.tokens, "tokens_per_s_per_peer": res.tokens_per_s, "threads": res.threads,
                        "throughput_ratio": None, "bytes_per_outer_step": 0, "comm_reduction": None,
                        "curve": [[p.tokens, p.val_bpb] for p in res.curve]})
    fp32_bytes = {runs[0].peers: _median([s.bytes_per_outer_step for n in runs for s in n.stats])
                  for runs in networks if runs[0].codec.name == "fp32"}
    for runs in networks:
        net = runs[0]
        every = [s for n in runs for s in n.stats]
        finals = [n.final_bpb for n in runs if n.final_bpb is not None]
        val_bpb = statistics.fmean(finals) if finals else None
        # each run against the standalone rate measured right before and after it
        alones = [statistics.fmean(n.standalone) for n in runs if n.standalone]
        alone = statistics.fmean(alones) if alones else None
        rate = _median([s.tokens_per_s for s in every])
        sent = _median([s.bytes_per_outer_step for s in every])
        theory_fp32 = 2 * (net.peers - 1) / net.peers * FP32_BYTES * params  # ring all-reduce, per step
        per_step_fp32 = fp32_bytes.get(net.peers) or theory_fp32
        b = baselines.get(f"b{net.peers}")

        def pooled(attr: str, peers: list[PeerStats] = every) -> float | None:
            """The median of a per-round list over every peer's rounds."""
            return _median([v for p in peers for v in getattr(p, attr)])

        cycle = _median([s.cycle_seconds / (s.outer_steps - 1) for s in every if s.outer_steps > 1])
        configs.append({
            "name": net.name, "peers": net.peers, "bits": net.codec.bits, "val_bpb": val_bpb,
            "bpb_ratio": _ratio(val_bpb, b.final_bpb if b else None), "bpb_ratio_a": _ratio(val_bpb, a),
            "tokens_per_s_per_peer": rate, "throughput_ratio": _ratio(rate, alone),
            "bytes_per_outer_step": sent,
            "comm_reduction": per_step_fp32 * layout.inner_steps[net.peers] / sent if sent else None,
            "comm_reduction_vs_ring_theory": theory_fp32 * layout.inner_steps[net.peers] / sent if sent else None,
            "inner_steps": layout.inner_steps[net.peers], "val_bpb_runs": [n.final_bpb for n in runs],
            "bytes_received_per_outer_step": pooled("bytes_received"),
            # what a peer sends per coordinate of its share of a ring all-reduce (codec rate + overhead)
            "wire_bits_per_coord": sent * 8 / (theory_fp32 / FP32_BYTES) if sent else None,
            "standalone_tokens_per_s": alone, "step_tokens_per_s": _median([s.step_tokens_per_s for s in every]),
            "in_steps_fraction": _median([s.in_steps_fraction for s in every]),
            "cycle_s": cycle, "inner_s": pooled("inner_s"), "round_s": pooled("round_s"),
            "matchmaking_s": pooled("matchmaking_s"), "allreduce_s": pooled("allreduce_s"),
            "after_round_s": pooled("after_s"),
            "phases_s": {phase: _median([v for s in every for v in s.phases.get(phase, [])])
                         for phase in sorted({p for s in every for p in s.phases})},
            "standalone_around_runs": [n.standalone for n in runs],
            "outer_steps": [s.outer_steps for s in every], "outer_steps_target": net.outer_steps_target,
            "rounds": [s.rounds for s in every], "group_sizes": sorted({g for s in every for g in s.group_sizes}),
            "resyncs": sum(s.resyncs for s in every), "params_consistent": all(n.consistent for n in runs),
            "codec_relative_error_in_network": _median([s.codec_relative_error for s in every]),
            "reported_val_bpb": [n.curve[-1][1] if n.curve else None for n in runs],
            "wall_s": [n.wall_seconds for n in runs], "exit_codes": [n.exit_codes for n in runs],
            "load_avg_1min": statistics.fmean(n.load_avg for n in runs),
            "join_to_first_step_s": [s.join_to_first_step_s for s in every],
            "curve": [list(p) for p in net.curve], "curves": [[list(p) for p in n.curve] for n in runs],
        })
    joins = [s.join_to_first_step_s for runs in networks for n in runs for s in n.stats
             if s.join_to_first_step_s is not None]
    return {
        "configs": configs,
        "join_to_first_step_s": _median(joins),
        "state_sync_s": {row["preset"]: row.get("state_sync_s") for row in sync},
        "details": {
            "model": {"preset": "debug", "params": params},
            "layout": {"inner_steps": {str(k): v for k, v in layout.inner_steps.items()},
                       "batch_size": layout.batch_size, "seq_len": layout.seq_len, "budget_tokens": layout.budget,
                       "outer_steps": layout.outer_steps},
            "data": settings.data, "threads_per_peer": settings.threads_per_peer,
            "baseline_threads": settings.baseline_threads,
            # every standalone measurement of N processes side by side, in bench order (mean of the N)
            "standalone_tokens_per_s": {str(k): v for k, v in standalone.items()},
            "join_to_first_step_s": {"median": _median(joins), "max": max(joins) if joins else None},
            "state_sync": sync, "codec_errors": errors, "load_avg_1min_at_start": started_load,
        },
    }


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"{'config':<12} {'peers':>5} {'bits':>4} {'val bpb':>8} {'/ (b)':>6} {'/ (a)':>6} {'tok/s/peer':>10} "
          f"{'alone':>7} {'util':>5} {'B/outer step':>12} {'comm red.':>9} {'round s':>7} {'rel err':>7}")
    for c in report["configs"]:
        print(f"{c['name']:<12} {c['peers']:>5} {c['bits']:>4} {_fmt(c['val_bpb'], '.4f'):>8} "
              f"{_fmt(c['bpb_ratio'], '.3f'):>6} {_fmt(c['bpb_ratio_a'], '.3f'):>6} "
              f"{_fmt(c['tokens_per_s_per_peer'], ',.0f'):>10} {_fmt(c.get('standalone_tokens_per_s'), ',.0f'):>7} "
              f"{_fmt(c['throughput_ratio'], '.2f'):>5} {_fmt(c['bytes_per_outer_step'], ',.0f'):>12} "
              f"{_fmt(c['comm_reduction'], ',.0f'):>9} {_fmt(c.get('round_s'), '.2f'):>7} "
              f"{_fmt(c.get('codec_relative_error_in_network'), '.4f'):>7}")
    details = report["details"]
    print()
    print(f"{'config':<12} {'val bpb of each run':<28}", *(f"{c['name']}: " + " ".join(
        _fmt(v, ".4f") for v in c["val_bpb_runs"]) for c in report["configs"] if c["peers"] > 1), sep="\n  ")
    print()
    print(f"{'config':<12} {'cycle s':>7} {'inner s':>7} {'round s':>7} {'(match)':>7} {'(reduce)':>8} "
          f"{'after s':>7} {'in steps':>8} {'groups':>7} {'resyncs':>7} {'same θ':>6} {'load':>5}")
    for c in report["configs"]:
        if c["peers"] == 1:
            continue
        print(f"{c['name']:<12} {_fmt(c['cycle_s'], '.2f'):>7} {_fmt(c['inner_s'], '.2f'):>7} "
              f"{_fmt(c['round_s'], '.2f'):>7} {_fmt(c['matchmaking_s'], '.2f'):>7} {_fmt(c['allreduce_s'], '.2f'):>8} "
              f"{_fmt(c['after_round_s'], '.2f'):>7} {_fmt(c.get('in_steps_fraction'), '.3f'):>8} "
              f"{','.join(map(str, c['group_sizes'])):>7} {c['resyncs']:>7} "
              f"{'yes' if c['params_consistent'] else 'NO':>6} {c['load_avg_1min']:>5.2f}")
    print()
    print("after-round phases, median s per outer step:")
    for c in report["configs"]:
        if c["peers"] > 1:
            print(f"  {c['name']:<12}", "  ".join(f"{k} {_fmt(v, '.3f')}" for k, v in c.get("phases_s", {}).items()))
    print()
    print(f"{'codec':<8} {'bits/coord':>10} {'rel. error':>10} {'cosine':>8} {'SNR dB':>7} {'encode s':>8}"
          "   (one real pseudo-gradient)")
    for row in details["codec_errors"]:
        print(f"{row['codec']:<8} {row['bits_per_coord']:>10.3f} {row['relative_error']:>10.4f} {row['cosine']:>8.5f} "
              f"{row['snr_db']:>7.2f} {row['encode_s']:>8.3f}")
    print()
    join = details["join_to_first_step_s"]
    print(f"join → first step: median {_fmt(join['median'], '.1f')} s, max {_fmt(join['max'], '.1f')} s "
          "(fresh peers, from the creation of the `lila-peer join` process)")
    for row in details["state_sync"]:
        print(f"state sync {row['preset']}: {_fmt(row.get('state_sync_s'), '.2f')} s, "
              f"{_fmt(row.get('bytes'), ',.0f')} bytes; joiner's join → first step "
              f"{_fmt(row.get('join_to_first_step_s'), '.1f')} s{'  ' + row['error'] if 'error' in row else ''}")


def plot(report: dict[str, Any], path: Path) -> None:
    """Validation bpb against tokens for every configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    families = [*CODECS, *(c["name"] for c in report["configs"] if c["peers"] == 1)]
    colors = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for c in report["configs"]:
        if c["peers"] == 1:  # baselines dashed, 2-peer networks solid, 4-peer dash-dotted
            color, style, curves = colors[c["name"]], "--", [c["curve"]]
        else:
            color, style = colors[c["name"].split("-", 1)[1]], "-" if c["peers"] == 2 else "-."
            curves = c.get("curves") or [c["curve"]]
        for index, curve in enumerate(curves):
            points = [(t, v) for t, v in curve if v is not None and not math.isnan(v)]
            if points:
                ax.plot([t for t, _ in points], [v for _, v in points], style, color=color,
                        linewidth=1.0 if index else 1.6, alpha=1.0 if index == 0 else 0.5,
                        label=None if index else f"{c['name']} ({_fmt(c['val_bpb'], '.3f')})")
    ax.set_xlabel("training tokens (all peers)")
    ax.set_ylabel("validation bits per byte")
    layout = report["details"]["layout"]
    hs = ", ".join(f"H={h} ({n} peers)" for n, h in layout["inner_steps"].items())
    ax.set_title(f"LILA network vs plain training: debug model, {layout['outer_steps']} outer steps, {hs}, "
                 f"B={layout['batch_size']}×{layout['seq_len']}", fontsize=9)
    finals = [c["val_bpb"] for c in report["configs"] if c["val_bpb"] is not None]
    if finals:
        ax.set_ylim(min(finals) * 0.97, max(finals) * 1.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def default_data() -> str:
    return f"parquet:{PYTHON_DOCS}" if PYTHON_DOCS.is_dir() else FALLBACK_DATA


def shuffled_source(spec: str, workdir: Path, *, seed: int) -> str:
    """A ``parquet:`` source with its rows shuffled once (fixed ``seed``) into ``workdir``; other specs as is.

    The Python docs are sorted by file path, so shards in plan order are topic-sorted (c-api, then
    howto, library, ..., whatsnew) and a validation cap keeps only the first held-out files (all c-api):
    the validation bpb of every run then jumps with the topic being trained. Shuffling the rows keeps the
    same documents and ids (so the same held-out split) but makes shards and the capped validation set
    a mix of topics. Documents keep their ids, so ``is_validation`` selects the same held-out files.
    """
    if not spec.startswith("parquet:"):
        return spec
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(spec.split(":", 1)[1])
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    table = pa.concat_tables([pq.read_table(f) for f in files])
    order = np.random.default_rng(seed).permutation(table.num_rows)
    out = workdir / "data" / f"{path.stem}-shuffled-{seed}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(pa.array(order)), out, row_group_size=SHUFFLED_ROW_GROUP)
    return f"parquet:{out}"


def run_bench(settings: BenchSettings, *, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything of issue 8's benchmark, in order: baselines, standalone rates, networks, codec errors,
    state sync. Returns the report (see :func:`build_report`)."""
    started_load = os.getloadavg()[LOAD_AVG_WINDOW]
    _peer_env()
    settings.workdir.mkdir(parents=True, exist_ok=True)
    data = shuffled_source(settings.data, settings.workdir, seed=DATA_SEED) if settings.shuffle else settings.data
    settings = replace(settings, data=data)
    run = with_data(load_run_config(settings.config), settings.data)
    layout = derive_layout(run, settings.peers)
    tokenizer = load_tokenizer(run.data.tokenizer)
    texts = validation_texts(run)
    params = sum(p.numel() for p in build_model(run, tokenizer).parameters())
    progress(f"debug model: {params:,} parameters; H={layout.inner_steps}, B={layout.batch_size}, "
             f"T={layout.seq_len}, budget {layout.budget:,} tokens, outer steps {layout.outer_steps}; "
             f"load {started_load:.2f}")
    config_path = settings.workdir / "bench-run.toml"
    config_path.write_text(run.to_toml())
    t0 = time.monotonic()
    baselines, delta = run_baselines(config_path, layout=layout, settings=settings)
    progress("baselines: " + ", ".join(f"({k}) batch {r.batch_size}: val bpb {r.final_bpb:.4f}"
                                       for k, r in baselines.items()) + f" ({time.monotonic() - t0:.0f} s)")
    torch.set_num_threads(settings.threads_per_peer)
    errors = codec_errors(run, delta, labels=settings.error_codecs)
    standalone: dict[int, list[float]] = {}
    networks: list[list[NetworkResult]] = []  # the repeats of each configuration
    for peers in settings.peers:

        def alone(peers: int = peers) -> list[float]:
            rates = standalone_throughput(config_path, settings.data, processes=peers,
                                          threads=settings.threads_per_peer, steps=settings.throughput_steps,
                                          workdir=settings.workdir)
            standalone.setdefault(peers, []).append(statistics.fmean(rates))
            progress(f"standalone, {peers} processes × {settings.threads_per_peer} thread(s): "
                     f"{statistics.fmean(rates):,.0f} tokens/s each")
            return rates

        before = alone()
        expected = layout.budget / peers / statistics.fmean(before)
        for codec in settings.codecs:
            runs = []
            for repeat in range(settings.repeats):
                net = run_network(run, codec=codec, peers=peers, layout=layout, settings=settings,
                                  expected_s=expected, tokenizer=tokenizer, texts=texts, repeat=repeat)
                after = alone()  # also the next run's "before": each run is bracketed by two measurements
                net.standalone = [statistics.fmean(before), statistics.fmean(after)]
                before = after
                runs.append(net)
                progress(f"network {net.name} (run {repeat + 1}): val bpb {_fmt(net.final_bpb, '.4f')} in "
                         f"{net.wall_seconds:.0f} s, exits {net.exit_codes}, outer steps "
                         f"{[s.outer_steps for s in net.stats]}, load {net.load_avg:.2f}")
            networks.append(runs)
    sync = []
    for preset in settings.sync_presets:
        try:
            row = measure_state_sync(run, preset, settings)
        except Exception as exc:  # one failed measurement must not lose the whole bench's results
            logger.exception("state sync of %s failed", preset)
            row = {"preset": preset, "error": f"{type(exc).__name__}: {exc}"}
        sync.append(row)
        progress(f"state sync {preset}: {row}")
    return build_report(layout=layout, settings=settings, baselines=baselines, networks=networks,
                        standalone=standalone, errors=errors, sync=sync, params=params, started_load=started_load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="runs/bench-quick.toml (3.07 M tokens, H = 100 × 4 / N) instead of "
                        "runs/bench-full.toml (4.6 M tokens, H = 150 × 4 / N)")
    parser.add_argument("--config", type=Path, help="a bench run config (default: by --quick)")
    parser.add_argument("--data", default=default_data(), help="source spec (default: the Python docs beside the repo)")
    parser.add_argument("--only", type=int, nargs="+", choices=PEER_COUNTS, default=list(PEER_COUNTS),
                        help="peer counts to run")
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=list(CODECS))
    parser.add_argument("--threads-per-peer", type=int, default=1)
    parser.add_argument("--baseline-threads", type=int, default=1,
                        help="threads of each baseline process (they run side by side)")
    parser.add_argument("--error-codecs", nargs="+", choices=[c[0] for c in ERROR_CODECS],
                        help="codecs whose error on a real pseudo-gradient is measured (default: all but Leech "
                             "with --quick: its encoder takes about a minute per million coordinates here)")
    parser.add_argument("--throughput-steps", type=int, default=100,
                        help="timed steps of each standalone process (one measurement before and after every network)")
    parser.add_argument("--evals", type=int, default=15, help="evaluations along each baseline run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each network configuration (peers get different shards from run to run: "
                             "the spread of val bpb is the noise a codec comparison has to beat)")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="train on a parquet source in file order (the Python docs are sorted by topic)")
    parser.add_argument("--sync-presets", nargs="*", default=list(SYNC_PRESETS))
    parser.add_argument("--workdir", type=Path, help="keep logs and checkpoints here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    parser.add_argument("--plot", type=Path, help=f"PNG of val bpb vs tokens (default: beside --out, {CHART_NAME})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = args.config or (QUICK_CONFIG if args.quick else FULL_CONFIG)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lila-bench-network-"))
    settings = BenchSettings(config=config, data=args.data, peers=tuple(args.only),
                             codecs=tuple(CODECS[c] for c in args.codecs), threads_per_peer=args.threads_per_peer,
                             baseline_threads=args.baseline_threads, throughput_steps=args.throughput_steps,
                             workdir=workdir, sync_presets=tuple(args.sync_presets), evals_per_baseline=args.evals,
                             error_codecs=tuple(args.error_codecs or [c[0] for c in ERROR_CODECS
                                                                     if not (args.quick and c[1] == "leech")]),
                             shuffle=not args.no_shuffle, repeats=args.repeats)
    started = time.monotonic()
    report = run_bench(settings, progress=lambda line: print(f"[{time.monotonic() - started:6.0f} s] {line}",
                                                             flush=True))
    report["details"]["bench_seconds"] = time.monotonic() - started
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    chart = args.plot or ((args.out.with_suffix(".png")) if args.out else workdir / CHART_NAME)
    plot(report, chart)
    print(f"plot: {chart}; logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

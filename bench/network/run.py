# SPDX-License-Identifier: AGPL-3.0-or-later
"""Running the configurations: a network of N peers with one codec (coordinator and ``lila-peer join``
processes on 127.0.0.1, measured through their diaries, metrics and checkpoints), and the plain-training
baselines (a) and (b) as side-by-side ``bench.baseline`` processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.baseline import BaselineResult, evaluate
from bench.network.layout import BenchSettings, CodecChoice, Layout, network_run_config
from bench.network.measure import checkpoint_curve, make_repo_importable
from bench.network.watch import OUTER_STEPS_FILE, PeerStats, Watcher, peer_stats, read_diary
from lila_data.tokenizer import LilaTokenizer
from lila_model.checkpoint import load_checkpoint
from lila_net.config import RunConfig
from lila_run.harness import signal_group
from lila_run.local_network import LocalNetwork, NetworkOptions

logger = logging.getLogger("bench.network")

BASELINE_TIMEOUT_S = 4 * 3600.0
NETWORK_SLACK_S = 300.0  # added to the expected duration of a network run before it is stopped
NETWORK_SLOWDOWN_ALLOWED = 4.0  # a run may take this many times its compute estimate before it is stopped
LOAD_AVG_WINDOW = 0  # index into os.getloadavg(): the 1-minute average


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


def run_baselines(config: Path, *, layout: Layout, settings: BenchSettings) -> tuple[dict[str, BaselineResult],
                                                                                   torch.Tensor]:
    """Baselines (a) batch B and (b) batch N×B for every N, as side-by-side processes of
    ``baseline_threads`` threads each (oversubscribed multi-threaded torch on a busy machine crawls).
    Returns the results and (a)'s pseudo-gradient over H steps from the middle of its run."""
    make_repo_importable()
    mid_step = layout.budget // (layout.batch_size * layout.seq_len) // 2
    delta_path = settings.workdir / "baseline-a-delta.pt"
    jobs = {"a": layout.batch_size, **{f"b{n}": n * layout.batch_size for n in settings.peers}}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for key, batch in jobs.items():
            out = settings.workdir / f"baseline-{key}.json"
            out.unlink(missing_ok=True)
            argv = [sys.executable, "-m", "bench.baseline", "--config", str(config), "--batch-size", str(batch),
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
                signal_group(proc, signal.SIGKILL)
                proc.wait()
    results = {}
    for key, (proc, out) in procs.items():
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"baseline ({key}) failed (exit {proc.returncode}); see "
                               f"{settings.workdir / f'baseline-{key}.log'}")
        results[key] = BaselineResult.from_json(json.loads(out.read_text()))
    return results, torch.load(delta_path)

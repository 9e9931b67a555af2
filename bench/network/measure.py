# SPDX-License-Identifier: AGPL-3.0-or-later
"""Measurements around the networks: the standalone throughput of a peer's process setup, the val bpb of
every checkpoint a peer kept, a joiner's state download from a running peer, and the codecs' error on a
real pseudo-gradient."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.baseline import evaluate
from bench.network.layout import ERROR_CODECS, REPO, BenchSettings, sync_run_config
from bench.network.watch import OUTER_STEPS_FILE, STATUS_INTERVAL_S, http_get, read_diary, state_sync_from
from lila_codec import get_codec
from lila_data.tokenizer import LilaTokenizer
from lila_model.checkpoint import load_checkpoint
from lila_net.config import RunConfig
from lila_run.harness import signal_group
from lila_run.local_network import LocalNetwork, NetworkOptions
from peer.checkpoints import CheckpointCorrupt, CheckpointStore

logger = logging.getLogger("bench.network")

THROUGHPUT_TIMEOUT_S = 600.0
SYNC_PROVIDER_STEPS = 1  # outer steps the provider completes before the joiner starts
SYNC_TIMEOUT_S = 600.0


def make_repo_importable() -> None:
    """Peers (``python -m peer.cli``) and baselines (``python -m bench.baseline``) import from the repo:
    put it on the children's PYTHONPATH even when it is not pip-installed."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), *paths] if p)


def standalone_throughput(config: Path, data: str, *, processes: int, threads: int, steps: int,
                          workdir: Path) -> list[float]:
    """Tokens/s of ``processes`` copies of one peer's process setup training side by side, no network."""
    make_repo_importable()
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        for index in range(processes):
            out = workdir / f"throughput-{processes}x{threads}-{index}.json"
            out.unlink(missing_ok=True)
            argv = [sys.executable, "-m", "bench.baseline", "--config", str(config), "--data", data,
                    "--throughput", "--threads", str(threads), "--steps", str(steps), "--out", str(out)]
            procs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True), out))
        deadline = time.monotonic() + THROUGHPUT_TIMEOUT_S
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                signal_group(proc, signal.SIGKILL)
                proc.wait()
    rates = []
    for proc, out in procs:
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"standalone throughput process failed (exit {proc.returncode}); run python -m "
                               "bench.baseline --throughput by hand to see why")
        rates.append(json.loads(out.read_text())["tokens_per_s"])
    return rates


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
            body = http_get(status_url)
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


def codec_errors(run: RunConfig, delta: torch.Tensor, *, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Relative error, cosine and bits per coordinate of the codecs ``labels`` (of ERROR_CODECS) on one
    real pseudo-gradient."""
    rows = []
    norm = float(delta.norm())
    for label, name, extra in ERROR_CODECS:
        if label not in labels:
            continue
        options: dict[str, Any] = {}
        if name.startswith("sparse-"):
            options = replace(run.codec, name=name, **extra).options()
        elif name != "fp16":
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

# SPDX-License-Identifier: AGPL-3.0-or-later
"""End to end: `lila up --peers 2 --max-outer-steps 3` trains (val bpb falls at every evaluation), stops
cleanly, prints a summary naming the checkpoint and the saved status page, and leaves a checkpoint that
`lila eval` scores better than the untrained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from lila_data import evaluate_bpb, iter_validation_texts, load_tokenizer
from lila_model.checkpoint import load_checkpoint
from lila_model.model import LilaLM
from lila_net.config import load_run_config
from peer.events import EVENTS_FILE, read_events
from tests.helpers.paths import REPO

UP_TIMEOUT_S = 420
EVAL_DOCS = 8


OUTER_STEPS = 3


def test_lila_up_two_peers_learns_and_sums_up(tmp_path: Path, procs) -> None:
    workdir = tmp_path / "net"
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "lila_run.cli",
            "up",
            "--peers",
            "2",
            "--max-outer-steps",
            str(OUTER_STEPS),
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=UP_TIMEOUT_S)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(workdir.glob("*.log")))
    assert proc.returncode == 0, out + logs
    assert "status page  http://127.0.0.1:" in out
    checkpoint = workdir / "checkpoint"
    model, extra = load_checkpoint(checkpoint)
    assert extra["outer_step"] == OUTER_STEPS
    # both peers logged the same global parameters at every outer step (peer/events.py)
    hashes: dict[int, set[str]] = {}
    for index in range(2):
        for record in read_events(workdir / f"peer-{index}" / EVENTS_FILE):
            if record["event"] in ("state", "outer_step"):
                hashes.setdefault(record["outer_step"], set()).add(record["params_sha256"])
    assert sorted(hashes) == list(range(OUTER_STEPS + 1)) and all(len(h) == 1 for h in hashes.values()), hashes
    assert extra["params_sha256"] in hashes[OUTER_STEPS]
    # val bpb falls at every evaluation: θ₀, then every outer step (every peer evaluates every step)
    bpb = {r["outer_step"]: r["val_bpb"] for r in read_events(workdir / "peer-0" / EVENTS_FILE)
           if r["event"] in ("state", "outer_step")}
    assert sorted(bpb) == list(range(OUTER_STEPS + 1)), bpb
    assert all(bpb[step + 1] < bpb[step] for step in range(OUTER_STEPS)), bpb
    # the summary says so, and names the checkpoint and the saved status page
    summary = out[out.index("\nsummary\n"):]
    assert f"at the start -> {bpb[OUTER_STEPS]:.4f} at outer step {OUTER_STEPS} (falls at every evaluation" in summary
    assert f"checkpoint   {checkpoint}" in summary
    page = workdir / "status.html"
    assert f"status page  {page}" in summary
    assert "cpu-demo" in page.read_text() and "/static/" not in page.read_text()
    assert "sample       'The" in summary and "x more)" in summary

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lila_run.cli",
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--max-docs",
            str(EVAL_DOCS),
            "--out",
            str(tmp_path / "eval.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    trained_bpb = json.loads((tmp_path / "eval.json").read_text())["bpb"]

    run = load_run_config(REPO / "runs" / "cpu-demo.toml")
    torch.manual_seed(run.run.seed)
    untrained = LilaLM(model.config)
    texts = list(
        iter_validation_texts(
            next(iter(run.data.sources.values())), fraction=run.data.validation_fraction, max_docs=EVAL_DOCS
        )
    )
    untrained_bpb = evaluate_bpb(
        untrained, load_tokenizer(extra["tokenizer"]), texts, seq_len=model.config.block_size, batch_size=8
    ).bpb
    assert trained_bpb < untrained_bpb

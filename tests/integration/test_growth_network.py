# SPDX-License-Identifier: AGPL-3.0-or-later
"""Model growth mid-run on a loopback network: a coordinator and real ``lila-peer join`` processes.

The run's second curriculum stage grows the ``debug`` model ×2 in depth (``zero``, function-preserving);
the first stage's budget ends after about two outer steps of three peers, and the coordinator announces
the growth for the run's step + 2. Three peers start; one of them leaves at outer step 2 (its newest
checkpoint is pre-growth). Then:

* every peer that takes part logs one ``growth`` event at the same outer step with the same hash, and at
  every outer step — before, at and after the growth — every peer holds the same parameters (sha256);
* a peer that joins after the boundary downloads the grown state (its hash is the others') and averages;
* the peer that left, restarted from its pre-growth checkpoint, re-syncs across the boundary (downloads
  the grown state) and averages again; its new checkpoints hold the grown model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lila_run.harness import small_run, write_corpus, write_run_config
from lila_run.local_network import LocalNetwork, NetworkOptions
from peer.events import EVENTS_FILE, read_events
from tests.helpers.runs import assert_identical_per_step, hashes_by_step, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

SEQ_LEN = 64
BATCH = 2
INNER_STEPS = 2
PERIOD_TOKENS = BATCH * SEQ_LEN * INNER_STEPS  # one peer's tokens per outer step
FIRST_STAGE_TOKENS = 5 * PERIOD_TOKENS  # three peers pass it in their second period (two in their third)
LEAVER, JOINER = 2, 3
LEAVE_AT = 2  # the leaver's last (pre-growth) step
RUN_TIMEOUT_S = 360.0
POLL_S = 0.2


def _write_run(directory: Path) -> Path:
    run = small_run(
        name="growth-net",
        sources={"docs": write_corpus(directory / "docs.jsonl", docs=160, max_chars=3000)},
        stages=[{"name": "small", "tokens": FIRST_STAGE_TOKENS, "seq_len": SEQ_LEN},
                {"name": "deep", "tokens": 10_000_000, "seq_len": SEQ_LEN,
                 "growth": {"operator": "zero", "factor": 2}}],
        schedule={"peak_lr": 3e-3},
        data={"docs_per_shard": 2, "validation_fraction": 0.1, "validation_max_docs": 2},
        diloco={"inner_steps": INNER_STEPS, "batch_size": BATCH, "matchmaking_time_s": 1.5,
                "averaging_timeout_s": 10.0, "min_group_size": 2},
        codec={"name": "fp16"},
        trust={"aggregator": "mean"},
        coordinator={"heartbeat_interval_s": 0.5, "lease_timeout_s": 10.0, "max_leases_per_peer": 1},
    )
    return write_run_config(run, directory)


def test_three_peers_grow_the_model_and_a_joiner_and_a_restarted_peer_resync(tmp_path: Path, procs) -> None:
    workdir = tmp_path / "net"
    network = LocalNetwork(NetworkOptions(config=_write_run(tmp_path), workdir=workdir, peers=3, threads_per_peer=1,
                                          extra_peer_args=("--no-progress", "--eval-every", "0")))

    def events(index: int, kind: str | None = None) -> list[dict[str, Any]]:
        return read_events(network.peer_workdir(index) / EVENTS_FILE, kind)

    def logs() -> str:
        return "\n".join(f"==> {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(workdir.glob("*.log")))

    def averaged_after(index: int, step: int) -> bool:
        return any(e["outer_step"] > step and e["group_size"] >= 2 for e in events(index, "outer_step"))

    try:
        workdir.mkdir()
        network.start_coordinator()
        procs.track(network.coordinator)
        for index in range(3):
            extra = ["--max-outer-steps", str(LEAVE_AT)] if index == LEAVER else []
            procs.track(network.start_peer(index, extra_args=extra))
        leaver = network.peers[LEAVER]
        wait_until("the leaver to leave at its last step", lambda: leaver.poll() is not None, timeout=RUN_TIMEOUT_S,
                   context=logs, poll_s=POLL_S)
        assert leaver.returncode == 0, logs()
        grown = wait_until("peers 0 and 1 to grow the model", lambda: all(events(i, "growth") for i in (0, 1)),
                           timeout=RUN_TIMEOUT_S, context=logs, poll_s=POLL_S)
        assert grown
        growth_step = events(0, "growth")[0]["outer_step"]
        procs.track(network.start_peer(JOINER))  # joins after the boundary
        procs.track(network.start_peer(LEAVER))  # restarts from its pre-growth checkpoint
        wait_until("the joiner and the restarted peer to average after downloading the grown state",
                   lambda: averaged_after(JOINER, growth_step) and averaged_after(LEAVER, growth_step),
                   timeout=RUN_TIMEOUT_S, context=logs, poll_s=POLL_S)
        status = network.status()
    finally:
        network.stop()

    text = logs()
    growth = {i: events(i, "growth") for i in range(4)}
    assert [len(growth[i]) for i in range(4)] == [1, 1, 0, 0], text
    first = growth[0][0]
    assert growth_step > LEAVE_AT and (first["from_stage"], first["to_stage"]) == (0, 1)
    assert {(g[0]["outer_step"], g[0]["params_sha256"], g[0]["params_before"], g[0]["params_after"])
            for g in (growth[0], growth[1])} == {(growth_step, first["params_sha256"], first["params_before"],
                                                   first["params_after"])}
    assert first["params_after"] > first["params_before"]
    table = hashes_by_step(lambda i: events(i), range(4))
    assert_identical_per_step(table)  # before, at and after the growth
    assert table[growth_step][0] == {first["params_sha256"]}
    assert min(table) == 0 and max(table) > growth_step

    # the late joiner and the restarted peer (which resumed from its step-2 checkpoint first) loaded a grown
    # state: a download of a step at or after the growth, whose hash is the others' at that step
    assert f"resumed from local checkpoint step-{LEAVE_AT:08d}" in (workdir / f"peer-{LEAVER}.log").read_text()
    for index in (JOINER, LEAVER):
        downloads = [s for s in events(index, "state") if s["source"] == "download"]
        assert downloads and downloads[-1]["outer_step"] >= growth_step, (index, events(index, "state"), text)
        step = downloads[-1]["outer_step"]
        assert len(set().union(*table[step].values())) == 1 and len(table[step]) >= 2, (index, table[step])
    pre = network.peer_workdir(LEAVER) / "checkpoints"
    newest = json.loads((pre / (pre / "latest").read_text().strip() / "manifest.json").read_text())
    assert newest["step"] > growth_step and newest["meta"]["model_stage"] == 1
    config = json.loads((pre / f"step-{newest['step']:08d}" / "config.json").read_text())
    assert config["n_layers"] == 8, config  # debug has 4 layers; zero ×2
    assert status is not None and status["model"]["stage"] == 1 and status["model"]["next_growth"] is None, status
    assert status["stages"][1]["growth_step"] == growth_step

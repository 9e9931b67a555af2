# SPDX-License-Identifier: AGPL-3.0-or-later
"""Time-boxed inner periods with peers of different speeds: a coordinator and three ``lila-peer join``
processes on 127.0.0.1, one of them throttled to a quarter of the others' speed (``--throttle``), in a run
with ``diloco.period_s`` set. Every peer trains until the period's end instead of a fixed number of steps,
so the slow peer is in every round with fewer tokens, weighted by them; every peer holds the same
parameters after every round; the slow peer's tokens reach the coordinator's ledger every round."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from lila_run.harness import small_run, write_corpus, write_run_config
from lila_run.local_network import LocalNetwork, NetworkOptions
from peer.events import EVENTS_FILE, read_events
from tests.helpers.runs import assert_identical_per_step, hashes_by_step

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

OUTER_STEPS = 4
PERIOD_S = 2.0
SLOW = 2  # the index of the peer throttled to a quarter of the others' speed
THROTTLE = 0.5  # every peer runs at half speed or less: the 150 bundled documents last the whole test
RUN_TIMEOUT_S = 200.0


def _write_run(directory: Path, *, overlap: bool = False) -> Path:
    run = small_run(
        name="overlapped" if overlap else "timeboxed",
        sources={"docs": write_corpus(directory / "docs.jsonl", docs=200, max_chars=3000)},
        stage={"name": "all", "tokens": 10_000_000},
        schedule={"peak_lr": 3e-3},
        data={"docs_per_shard": 4, "validation_fraction": 0.1, "validation_max_docs": 4},
        diloco={"inner_steps": 4, "batch_size": 2, "matchmaking_time_s": 1.5, "averaging_timeout_s": 15.0,
                "min_group_size": 2, "period_s": PERIOD_S, "overlap": overlap},
        codec={"name": "fp16"},
        trust={"aggregator": "centered_clip"},
        coordinator={"heartbeat_interval_s": 0.5, "lease_timeout_s": 10.0, "max_leases_per_peer": 1},
    )
    return write_run_config(run, directory)


@pytest.mark.parametrize("overlap", [False, True], ids=["blocking", "overlapped"])
def test_a_four_times_slower_peer_is_in_every_round_with_its_tokens(tmp_path: Path, procs, overlap: bool) -> None:
    """Blocking: each round averages between two periods. Overlapped (``diloco.overlap``): each round
    averages while the next period trains and lands after it, one period late, on every peer alike."""
    network = LocalNetwork(NetworkOptions(config=_write_run(tmp_path, overlap=overlap), workdir=tmp_path / "net", peers=3,
                                          threads_per_peer=1, extra_peer_args=("--no-progress",)))
    try:
        network.start_coordinator()
        procs.track(network.coordinator)
        peers = [procs.track(network.start_peer(i, extra_args=[
            "--max-outer-steps", str(OUTER_STEPS), "--eval-every", "0",
            "--throttle", str(THROTTLE / 4 if i == SLOW else THROTTLE)])) for i in range(3)]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and any(p.poll() is None for p in peers):
            time.sleep(0.5)
        logs = "\n".join(f"==> {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(network.options.workdir.glob("*.log")))
        assert [p.poll() for p in peers] == [0, 0, 0], logs
        db = sqlite3.connect(f"file:{network.options.workdir / 'coordinator.db'}?mode=ro", uri=True)
        ledger = db.execute("SELECT p.name, m.outer_step, m.tokens_processed FROM metrics m "
                            "JOIN peers p ON p.peer_id = m.peer_id").fetchall()
        db.close()
    finally:
        network.stop()

    diaries = {i: read_events(network.peer_workdir(i) / EVENTS_FILE) for i in range(3)}
    rounds = {i: {e["outer_step"]: e for e in diaries[i] if e["event"] == "outer_step"} for i in range(3)}
    for index in range(3):
        assert sorted(rounds[index]) == list(range(1, OUTER_STEPS + 1)), (index, sorted(rounds[index]), logs)
        assert all(e["group_size"] == 3 for e in rounds[index].values()), (index, rounds[index], logs)
    assert_identical_per_step(hashes_by_step(lambda i: diaries[i], range(3)))
    for step in range(1, OUTER_STEPS + 1):
        slow = rounds[SLOW][step]["tokens"]
        fast = min(rounds[i][step]["tokens"] for i in range(3) if i != SLOW)
        # each period lasts PERIOD_S for everyone; the throttled peer trains about a quarter of the tokens
        assert 0 < slow and 2 * slow < fast, (step, slow, fast)
    credited = {(name, step): tokens for name, step, tokens in ledger}
    assert all(credited.get((f"peer-{SLOW}", step), 0) == rounds[SLOW][step]["tokens"]
               for step in range(1, OUTER_STEPS + 1)), (credited, rounds[SLOW])

    if overlap:  # each round landed after the next period, on every peer: its group formed a period earlier
        for index in range(3):
            formed = {e["round"]: e["t"] for e in diaries[index] if e["event"] == "group"}
            landed = {e["round"]: e["t"] for e in diaries[index] if e["event"] == "round"}
            assert all(landed[r] - formed[r] >= PERIOD_S / 2 for r in range(2, OUTER_STEPS + 1)), (formed, landed)

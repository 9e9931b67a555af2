# SPDX-License-Identifier: AGPL-3.0-or-later
"""Chaos: a 3-peer run (real `lila-coordinator serve` and `lila-peer join` processes) during which random
peers are SIGKILLed (whole process group: p2pd and all) and restarted, and the coordinator is SIGKILLed and
restarted once on the same ports. At the end: every shard (so every document) of the plan is completed
exactly once and credited exactly once, the three peers end holding identical parameters (the last state each
records in its ``outer-steps.jsonl``: after a round, a download or a re-sync), and the model's validation
bits per byte improved over the untrained one.

The faults are triggered by progress (completed shards), not by the clock, so a slow machine sees the same
sequence of events. Expect ~2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from coordinator.planning import plan_from_config
from lila_data import evaluate_bpb, iter_validation_texts, load_tokenizer
from lila_model.checkpoint import load_checkpoint
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_net.config import load_run_config
from lila_run.harness import LocalCoordinator, free_port, signal_group, write_corpus, write_run_config
from lila_run.local_network import LocalNetwork, NetworkOptions
from tests.helpers.runs import robust_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PEERS = 3
DOCS = 48
SEED = 7
POLL_S = 0.5
RESTART_PAUSE_S = 2.0
RUN_DEADLINE_S = 300.0
EXIT_GRACE_S = 60.0
EVAL_SEQ = 64
# (fraction of shards completed, fault): two peer kills and one coordinator crash, spread over the run
FAULTS = ((0.15, "peer"), (0.35, "coordinator"), (0.55, "peer"), (0.7, "peer"))


def _write_run(directory: Path) -> Path:
    run = robust_run(
        name="chaos",
        corpus=write_corpus(directory / "docs.jsonl", docs=DOCS),
        # no budget to reach: the stage (and the run) ends when every shard is completed
        stage_tokens=1_000_000_000,
        validation_max_docs=6,
        coordinator={"heartbeat_interval_s": 1.5, "lease_timeout_s": 6.0, "max_leases_per_peer": 1},
    )
    return write_run_config(run, directory)


def _final_state(workdir: Path) -> tuple[int, str]:
    """(outer step, params sha256) of the last parameters the peer held, from its event log."""
    held = None
    for line in (workdir / "outer-steps.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("params_sha256"):
            held = (event["outer_step"], event["params_sha256"])
    assert held is not None, workdir
    return held


def _checkpoint_with(workdirs: list[Path], step: int, digest: str) -> LilaLM:
    for workdir in workdirs:
        for path in sorted((workdir / "checkpoints").glob("step-*")):
            model, extra = load_checkpoint(path)
            if (extra.get("outer_step"), extra.get("params_sha256")) == (step, digest):
                return model
    raise AssertionError(f"no peer kept a checkpoint of outer step {step} with sha256 {digest[:12]}")


@dataclass
class ChaosRun:
    directory: Path
    config: Path
    workdirs: list[Path]
    faults: list[str]
    exit_codes: list[int | None]
    finished: bool
    logs: str


@pytest.fixture(scope="module")
def chaos(tmp_path_factory) -> Iterator[ChaosRun]:
    """Run the whole scenario once; the tests below check its outcome."""
    from tests.helpers.processes import ProcessReaper

    procs = ProcessReaper()
    tmp_path = tmp_path_factory.mktemp("chaos")
    try:
        yield _run_chaos(procs, tmp_path)
    finally:
        procs.reap()


def _run_chaos(procs, tmp_path: Path) -> ChaosRun:
    config_path = _write_run(tmp_path)
    # fixed (free) ports, so that a restarted coordinator is where the peers expect it
    coordinator = LocalCoordinator(
        config=config_path, workdir=tmp_path, grpc=f"127.0.0.1:{free_port()}", dht=True, spawn=procs.spawn,
        extra=["--dht-port", str(free_port()), "--dht-identity", str(tmp_path / "dht.key")],
    )
    coordinator.create_token()
    network = LocalNetwork(NetworkOptions(config=config_path, workdir=tmp_path, peers=PEERS, threads_per_peer=1))
    network.ready, network.token = coordinator.start(), coordinator.token
    current = {index: procs.track(network.start_peer(index)) for index in range(PEERS)}
    rng = random.Random(SEED)
    faults = list(FAULTS)
    done_faults: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < RUN_DEADLINE_S:
        if all(proc.poll() is not None for proc in current.values()):
            break
        status = network.status()
        if status is not None and faults:
            shards = status["shards"]
            if shards["completed"] >= faults[0][0] * shards["total"]:
                _, kind = faults.pop(0)
                if kind == "coordinator":
                    coordinator.kill()
                    network.ready = coordinator.start()
                    done_faults.append("coordinator")
                else:
                    victim = rng.choice([i for i, p in current.items() if p.poll() is None])
                    signal_group(current[victim], signal.SIGKILL)
                    current[victim].wait(timeout=30)
                    time.sleep(RESTART_PAUSE_S)
                    current[victim] = procs.track(network.start_peer(victim))
                    done_faults.append(f"peer-{victim}")
        time.sleep(POLL_S)
    for proc in current.values():
        try:
            proc.wait(timeout=EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    status = network.status()
    coordinator.stop()
    logs = "\n".join(
        f"--- {p.name}\n" + p.read_text(errors="replace")[-2500:] for p in sorted(tmp_path.glob("*.log"))
    )
    return ChaosRun(
        directory=tmp_path,
        config=config_path,
        workdirs=[network.peer_workdir(index) for index in range(PEERS)],
        faults=done_faults,
        exit_codes=[proc.poll() for proc in current.values()],
        finished=status is not None and status["finished"],
        logs=logs,
    )


def test_chaos_run_survives_every_fault_and_finishes(chaos: ChaosRun) -> None:
    assert len(chaos.faults) == len(FAULTS) and "coordinator" in chaos.faults, (chaos.faults, chaos.logs)
    assert chaos.exit_codes == [0] * PEERS, chaos.logs
    assert chaos.finished, chaos.logs


def test_chaos_every_document_is_completed_and_credited_exactly_once(chaos: ChaosRun) -> None:
    plan = plan_from_config(load_run_config(chaos.config))
    shards = {(s, shard.shard_id): shard for s, stage in enumerate(plan.stages) for shard in stage.shards}
    db = sqlite3.connect(chaos.directory / "coordinator.db")
    completed = db.execute("SELECT stage, shard_id, docs, tokens FROM completed_shards").fetchall()
    assert sorted((s, i) for s, i, _, _ in completed) == sorted(shards)
    assert all(docs == shards[(s, i)].num_docs for s, i, docs, _ in completed)
    assert sum(docs for _, _, docs, _ in completed) == DOCS
    credited = dict(db.execute("SELECT stage || '/' || shard_id, SUM(tokens) FROM credits GROUP BY stage, shard_id"))
    # (a shard of validation documents only has nothing to credit: no ledger rows)
    keys = [f"{s}/{i}" for s, i, _, _ in completed]
    assert [tokens for _, _, _, tokens in completed] == [credited.get(key, 0) for key in keys]
    assert set(credited) <= set(keys)
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
    db.close()


def test_chaos_peers_end_with_identical_parameters_that_improved(chaos: ChaosRun) -> None:
    finals = {index: _final_state(workdir) for index, workdir in enumerate(chaos.workdirs)}
    assert len(set(finals.values())) == 1, {i: (step, digest[:12]) for i, (step, digest) in finals.items()}
    step, digest = finals[0]
    assert step >= 1
    final_model = _checkpoint_with(chaos.workdirs, step, digest)
    run = load_run_config(chaos.config)
    tokenizer = load_tokenizer(run.data.tokenizer)
    texts = list(iter_validation_texts(run.data.sources["docs"], fraction=run.data.validation_fraction))
    torch.manual_seed(run.run.seed)
    untrained = LilaLM(get_preset(run.model.preset, vocab_size=tokenizer.vocab_size))
    before = evaluate_bpb(untrained, tokenizer, texts, seq_len=EVAL_SEQ, batch_size=8).bpb
    after = evaluate_bpb(final_model, tokenizer, texts, seq_len=EVAL_SEQ, batch_size=8).bpb
    assert after < before, (before, after)

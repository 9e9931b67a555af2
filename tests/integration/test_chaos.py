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
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from coordinator.launch import serve_command, wait_for_ready
from coordinator.planning import plan_from_config
from lila_data import evaluate_bpb, iter_texts, iter_validation_texts, load_tokenizer
from lila_model.checkpoint import load_checkpoint
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_net.config import load_run_config
from lila_run.local_network import LocalNetwork, NetworkOptions

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

CONFIG = """
[run]
name = "chaos"
seed = 0

[model]
preset = "debug"

[data]
tokenizer = "fineweb-edu-2048"
docs_per_shard = 2
validation_fraction = 0.2
validation_max_docs = 6

[data.sources]
docs = "jsonl:{path}"

[[curriculum.stages]]
name = "all"
tokens = 1_000_000_000  # no budget to reach: the stage (and the run) ends when every shard is completed
seq_len = 64
mixture = {{ docs = 1.0 }}

[curriculum.schedule]
peak_lr = 3e-3
warmup_tokens = 0
decay_tokens = 0

[diloco]
inner_steps = 4
batch_size = 4
matchmaking_time_s = 1.5
averaging_timeout_s = 10.0
min_group_size = 2  # a peer alone keeps its work for the next round rather than forking the parameters

[codec]
name = "fp16"

[trust]
aggregator = "centered_clip"

[coordinator]
heartbeat_interval_s = 1.5
lease_timeout_s = 6.0
max_leases_per_peer = 1
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_run(directory: Path) -> Path:
    docs = directory / "docs.jsonl"
    with docs.open("w") as out:
        for index, text in enumerate(iter_texts("bundled:fineweb-edu-sample", max_docs=DOCS)):
            out.write(json.dumps({"id": f"doc-{index}", "text": text}) + "\n")
    config = directory / "run.toml"
    config.write_text(CONFIG.format(path=docs))
    return config


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


class Coordinator:
    """`lila-coordinator serve` on fixed (free) ports, so that it can be restarted where peers expect it."""

    def __init__(self, procs, directory: Path, config: Path) -> None:  # procs: a ProcessReaper
        self.procs = procs
        self.directory = directory
        self.config = config
        self.db = directory / "coordinator.db"
        self.grpc = f"127.0.0.1:{_free_port()}"
        self.extra = ["--dht-port", str(_free_port()), "--dht-identity", str(directory / "dht.key")]
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}

    def start(self) -> dict:
        ready = self.directory / "coordinator.ready.json"
        ready.unlink(missing_ok=True)
        argv = serve_command(config=self.config, db=self.db, ready_file=ready, grpc=self.grpc, dht=True,
                             extra=self.extra)
        with (self.directory / "coordinator.log").open("ab") as log:
            self.proc = self.procs.spawn(argv, stdout=log, stderr=subprocess.STDOUT)
        self.ready = wait_for_ready(self.proc, ready, log=self.directory / "coordinator.log")
        return self.ready

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


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
    token = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "token", "create", "--db", str(tmp_path / "coordinator.db")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip().splitlines()[-1]
    coordinator = Coordinator(procs, tmp_path, config_path)
    network = LocalNetwork(NetworkOptions(config=config_path, workdir=tmp_path, peers=PEERS, threads_per_peer=1))
    network.ready, network.token = coordinator.start(), token
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
                    os.killpg(current[victim].pid, signal.SIGKILL)
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
    coordinator.proc.send_signal(signal.SIGTERM)
    coordinator.proc.wait(timeout=30)
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

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A poisoned peer in a real network: a coordinator and three ``lila-peer join`` processes on 127.0.0.1,
one of which (tests/helpers/poisoned_peer.py) scales its pseudo-gradients by 100 before averaging.

With ``trust.aggregator = "centered_clip"`` each honest part owner rejects the attacker's contribution
(norm over ``norm_bound`` × the group median) and reports it; with ``strike_witnesses = 2`` each round
becomes a strike, and after ``strikes_to_ban`` strikes the coordinator bans the attacker. Checked here:
the attacker exits with code 5 (banned); the ledger holds its strikes with their evidence (reason
``norm_ratio``, ratio far above the bound) and marks it banned; the status API lists it as banned; the two
honest peers hold identical parameters at every outer step and finish their outer steps, having never
applied a poisoned average (their parameters stay finite and the validation bpb goes down).
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from lila_run.harness import write_corpus, write_run_config
from lila_run.local_network import LocalNetwork, NetworkOptions
from peer.errors import EXIT_BANNED
from peer.events import EVENTS_FILE, read_events
from tests.helpers.runs import robust_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

ATTACKER = "tests.helpers.poisoned_peer"  # run with python -m
HIJACKER = "tests.helpers.hijacking_peer"
CLAIM_STEP = 10**15
HONEST_OUTER_STEPS = 5
STRIKES_TO_BAN = 2
NORM_BOUND = 5.0
RUN_TIMEOUT_S = 360.0
DOCS = 60


def _write_run(directory: Path) -> Path:
    run = robust_run(
        name="poisoned",
        corpus=write_corpus(directory / "docs.jsonl", docs=DOCS, max_chars=3000),
        stage_tokens=10_000_000,
        validation_max_docs=4,
        trust={"norm_bound": NORM_BOUND, "strikes_to_ban": STRIKES_TO_BAN, "strike_witnesses": 2},
        coordinator={"heartbeat_interval_s": 0.5, "lease_timeout_s": 6.0, "max_leases_per_peer": 1},
    )
    return write_run_config(run, directory)


def _run_with_attacker(tmp_path: Path, procs, module: str, env: dict[str, str] | None = None
                       ) -> tuple[LocalNetwork, dict | None]:
    """Two honest ``lila-peer join`` processes and one attacker (``python -m module`` with the same flags)
    until all three exit; asserts the attacker was banned (exit 5) and the honest peers finished (0).
    Returns the stopped network and the coordinator's last status."""
    network = LocalNetwork(NetworkOptions(config=_write_run(tmp_path), workdir=tmp_path / "net", peers=3,
                                          threads_per_peer=1, extra_peer_args=("--no-progress",)))
    try:
        network.start_coordinator()
        procs.track(network.coordinator)
        honest = [procs.track(network.start_peer(i, extra_args=["--max-outer-steps", str(HONEST_OUTER_STEPS)]))
                  for i in range(2)]
        argv = network.peer_command(2)
        assert argv[1:3] == ["-m", "peer.cli"], argv
        full_env = network._env() | {"LILA_JOIN_TOKEN": network.token, **(env or {})}
        with open(network.options.workdir / "peer-2.log", "ab") as log:
            attacker = procs.spawn([argv[0], "-m", module, *argv[3:]], stdout=log, stderr=subprocess.STDOUT,
                                   env=full_env)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and any(p.poll() is None for p in (*honest, attacker)):
            time.sleep(0.5)
        logs = "\n".join(f"==> {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(network.options.workdir.glob("*.log")))
        assert attacker.poll() == EXIT_BANNED, logs
        assert [p.poll() for p in honest] == [0, 0], logs
        status = network.status()
    finally:
        network.stop()
    return network, status


def test_a_peer_sending_scaled_pseudo_gradients_is_banned_and_the_honest_peers_train_on(
    tmp_path: Path, procs
) -> None:
    network, status = _run_with_attacker(tmp_path, procs, ATTACKER)

    # the ledger: the attacker (the only peer named "peer-2") is banned, with its strikes and their evidence
    db = sqlite3.connect(f"file:{network.options.workdir / 'coordinator.db'}?mode=ro", uri=True)
    states = dict(db.execute("SELECT name, state FROM peers"))
    assert states["peer-2"] == "banned" and states["peer-0"] != "banned" and states["peer-1"] != "banned"
    attacker_id = db.execute("SELECT peer_id FROM peers WHERE name = 'peer-2'").fetchone()[0]
    rows = db.execute("SELECT accused, reporter, reason, norm_ratio, struck FROM strikes").fetchall()
    db.close()
    assert rows and all(accused == attacker_id for accused, *_ in rows), rows
    assert {reason for _, _, reason, _, _ in rows} == {"norm_ratio"}
    assert all(ratio is not None and ratio > NORM_BOUND for *_, ratio, _ in rows), rows
    assert sum(struck for *_, struck in rows) == STRIKES_TO_BAN
    assert len({reporter for _, reporter, *_ in rows}) == 2  # both honest part owners witnessed it
    assert status is not None and [p["name"] for p in status["banned"]] == ["peer-2"]

    # the honest peers: same parameters at every step, every round applied without the attacker's ×100
    steps = {}
    for index in range(2):
        events = read_events(network.peer_workdir(index) / EVENTS_FILE)
        outer = [e for e in events if e["event"] == "outer_step"]
        assert [e["outer_step"] for e in outer][-1] == HONEST_OUTER_STEPS
        steps[index] = {e["outer_step"]: e["params_sha256"] for e in outer}
        bpbs = [e["val_bpb"] for e in events if e.get("val_bpb") is not None]
        assert len(bpbs) >= 2 and all(math.isfinite(b) for b in bpbs) and bpbs[-1] < bpbs[0], bpbs
    shared = set(steps[0]) & set(steps[1])
    assert shared and all(steps[0][k] == steps[1][k] for k in shared), steps


def test_a_peer_announcing_a_far_future_step_is_banned_by_its_own_signed_record(tmp_path: Path, procs) -> None:
    """The state hijack across real processes and the real, validating DHT: the attacker announces every
    state it serves as outer step 10**15. Before, every peer dropped its work to download the attacker's
    state; now the honest peers ignore the claim and forward the signed record, and the coordinator bans
    the attacker on it (exit 5), with no strike needed."""
    network, _ = _run_with_attacker(tmp_path, procs, HIJACKER, {"LILA_TEST_CLAIM_STEP": str(CLAIM_STEP)})

    db = sqlite3.connect(f"file:{network.options.workdir / 'coordinator.db'}?mode=ro", uri=True)
    peers = {name: (state, json.loads(record)) for name, state, record in db.execute(
        "SELECT name, state, record FROM peers")}
    strikes = db.execute("SELECT COUNT(*) FROM strikes").fetchone()[0]
    db.close()
    assert peers["peer-2"][0] == "banned" and peers["peer-0"][0] != "banned" and peers["peer-1"][0] != "banned"
    assert f"announced outer step {CLAIM_STEP}" in peers["peer-2"][1]["ban_reason"], peers["peer-2"][1]
    assert strikes == 0  # one signed record was proof enough

    # the honest peers never loaded the attacker's state: their steps run 1..N with the same hashes
    steps = {}
    for index in range(2):
        events = read_events(network.peer_workdir(index) / EVENTS_FILE)
        outer = [e["outer_step"] for e in events if e["event"] == "outer_step"]
        assert max(outer) == HONEST_OUTER_STEPS and CLAIM_STEP not in outer, outer
        steps[index] = {e["outer_step"]: e["params_sha256"] for e in events if e["event"] == "outer_step"}
    shared = set(steps[0]) & set(steps[1])
    assert shared and all(steps[0][k] == steps[1][k] for k in shared), steps

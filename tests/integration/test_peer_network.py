# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer in a real network: a coordinator subprocess and real ``lila-peer join`` processes on 127.0.0.1.

Every peer writes ``outer-steps.jsonl`` (see :mod:`peer.events`); the tests read those files and the
coordinator's SQLite ledger:

1. three peers train a tiny corpus to its end with the e8 4-bit lattice codec: at every outer step every
   peer holds the same global parameters (sha256), validation bits per byte go down, every planned shard
   is completed exactly once, and the credited tokens are exactly the tokens in the shards;
2. a peer's process group is SIGKILLed in the middle of an averaging round: the others end that round
   within the averaging timeout and go on, its lease expires and another peer completes the shard from
   the last reported position, and a peer that joins later downloads the current state (same hash);
3. a peer frozen (SIGSTOP) past its lease timeout while the other applies a round alone comes back,
   drops the lease it lost, downloads the state it missed and averages with the other again; then
   Ctrl+C (SIGINT to its process group): it leaves within 10 s with exit code 0, its lease is released
   (not expired) at the position it reports, and the coordinator records the Leave.

The run config is written into ``tmp_path``: the ``debug`` model, a corpus of a few dozen truncated
FineWeb-Edu documents, short inner periods, short matchmaking and a short lease timeout.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lila_data import ShardReader, load_tokenizer, plan_shards
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_run.harness import BUNDLED_SAMPLE, small_run, write_corpus, write_run_config
from lila_run.local_network import LocalNetwork, NetworkOptions
from peer.events import EVENTS_FILE, read_events
from tests.helpers.runs import assert_identical_per_step, hashes_by_step, wait_until

pytestmark = pytest.mark.timeout(600)

BUNDLED = BUNDLED_SAMPLE
TOKENIZER = "fineweb-edu-8192"
SEQ_LEN = 64
BATCH = 4
INNER_STEPS = 6
DOCS_PER_SHARD = 3
VALIDATION_FRACTION = 0.2
MATCHMAKING_S = 1.5
AVERAGING_TIMEOUT_S = 10.0
HEARTBEAT_S = 0.5
LEASE_TIMEOUT_S = 3.0
STAGE_TOKENS = 10_000_000  # far above the corpus: the stage ends when every shard is completed
RUN_TIMEOUT_S = 300.0
LEAVE_DEADLINE_S = 10.0
FAST_STRAGGLER_WAIT_S = 2.0
POLL_S = 0.05
SPLIT_POLL_S = 0.5  # how often the three-peer run reads the coordinator's status while it trains


# ---------------------------------------------------------------------- fixtures of the run
def write_run(directory: Path, *, spec: str, codec: dict[str, Any] | None = None,
              validation_max_docs: int = 6) -> Path:
    run = small_run(
        name="peer-net-test",
        sources={"corpus": spec},
        stage={"name": "all", "tokens": STAGE_TOKENS, "seq_len": SEQ_LEN},
        schedule={"peak_lr": 3e-3, "warmup_tokens": 1000, "decay_tokens": 1000, "min_lr_ratio": 0.1},
        data={"tokenizer": TOKENIZER, "docs_per_shard": DOCS_PER_SHARD,
              "validation_fraction": VALIDATION_FRACTION, "validation_max_docs": validation_max_docs},
        diloco={"inner_steps": INNER_STEPS, "batch_size": BATCH, "outer_lr": 0.7, "outer_momentum": 0.9,
                "matchmaking_time_s": MATCHMAKING_S, "averaging_timeout_s": AVERAGING_TIMEOUT_S},
        codec=codec or {"name": "e8", "bits": 4, "block_size": 64},
        trust={"aggregator": "mean"},
        coordinator={"heartbeat_interval_s": HEARTBEAT_S, "lease_timeout_s": LEASE_TIMEOUT_S},
    )
    return write_run_config(run, directory)


def shard_truth(spec: str) -> dict[str, tuple[int, int]]:
    """Per planned shard: (tokens a reader trains — full windows × seq_len, stream tokens credited at
    completion — the final position). Computed here, independently of the peers."""
    tokenizer = load_tokenizer(TOKENIZER)
    truth = {}
    for shard in plan_shards(spec, docs_per_shard=DOCS_PER_SHARD):
        reader = ShardReader(shard, tokenizer=tokenizer, seq_len=SEQ_LEN, validation_fraction=VALIDATION_FRACTION)
        windows = sum(1 for _ in reader)
        truth[shard.shard_id] = (windows * SEQ_LEN, reader.position.tokens_consumed)
    return truth


class Net:
    """A LocalNetwork plus the readers the tests need."""

    def __init__(self, tmp_path: Path, procs, *, spec: str, peers: int, codec: dict[str, Any] | None = None,
                 extra_peer_args: tuple[str, ...] = ()) -> None:
        self.workdir = tmp_path / "net"
        self.workdir.mkdir()
        config = write_run(tmp_path, spec=spec, codec=codec)
        self.network = LocalNetwork(NetworkOptions(
            config=config, workdir=self.workdir, peers=peers, threads_per_peer=1,
            extra_peer_args=("--no-progress", *extra_peer_args)))
        self.procs = procs
        self.network.start_coordinator()
        procs.track(self.network.coordinator)

    def start_peer(self, *extra: str):
        return self.procs.track(self.network.start_peer(extra_args=extra))

    def events(self, index: int, event: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.network.peer_workdir(index) / EVENTS_FILE, event)

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = RUN_TIMEOUT_S) -> Any:
        return wait_until(what, predicate, timeout=timeout, context=self.logs, poll_s=POLL_S)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"==> {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.workdir / 'coordinator.db'}?mode=ro", uri=True, timeout=10)

    def stop(self) -> None:
        self.network.stop()


# ---------------------------------------------------------------------- 1. integration
def test_three_peers_train_the_corpus_to_its_end_with_identical_parameters(tmp_path: Path, procs) -> None:
    spec = write_corpus(tmp_path / "corpus.jsonl", docs=80, max_chars=1500, keep_ids=True)
    truth = shard_truth(spec)
    net = Net(tmp_path, procs, spec=spec, peers=3)
    try:
        peers = [net.start_peer() for _ in range(3)]
        seen = []  # the coordinator's view of the peers' parameter hashes while they train
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while any(proc.poll() is None for proc in peers) and time.monotonic() < deadline:
            status = net.network.status()
            if status is not None:
                seen.append(status["splits"])
            time.sleep(SPLIT_POLL_S)
        for proc in peers:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        codes = [proc.returncode for proc in peers]
        assert codes == [0, 0, 0], net.logs()
        status = net.network.status()
    finally:
        net.stop()

    # Every outer step: one hash across every peer that holds it; several peers per step.
    table = hashes_by_step(net.events, range(3))
    assert_identical_per_step(table)
    # The coordinator compared the hashes the peers reported with each outer step and found no split.
    assert status is not None and status["splits"]["count"] == 0, net.logs()
    assert all((s["count"], s["latest"]) == (0, None) and s["distinct_hashes"] <= 1 for s in seen), seen
    assert any(s["compared_step"] >= 1 and s["distinct_hashes"] == 1 for s in seen), seen
    assert {p["reachability"] for p in status["peers"]} - {""} <= {"direct", "relayed", "client"}
    assert any(p["reachability"] for p in status["peers"]), status["peers"]
    applied = {i: [r["outer_step"] for r in net.events(i, "outer_step")] for i in range(3)}
    last = max(max(steps, default=0) for steps in applied.values())
    assert last >= 3, applied
    assert sorted(table) == list(range(last + 1)), "an outer step nobody logged"
    shared = [step for step in range(1, last + 1) if len(table[step]) >= 2]
    assert len(shared) >= 2, dict(table)
    # The lattice codec was on: a member of a 3-peer group sends about 2·(3-1)/3 of the encoded vector,
    # which at e8 4-bit is under a sixth of what fp32 would take.
    numel = sum(p.numel() for p in LilaLM(get_preset("debug", vocab_size=load_tokenizer(TOKENIZER).vocab_size))
                .parameters() if p.requires_grad)
    fp32_bytes = 2 * (3 - 1) / 3 * numel * 4
    trios = [r for i in range(3) for r in net.events(i, "round") if r["applied"] and r["group_size"] == 3]
    assert trios, "no round was averaged by all three peers"
    assert all(0 < r["bytes_sent"] < fp32_bytes / 6 for r in trios), (fp32_bytes, trios)

    # Validation bits per byte of the global parameters go down from θ₀ to the last step.
    first = [r["val_bpb"] for i in range(3) for r in net.events(i, "state") if r["outer_step"] == 0]
    final = [r["val_bpb"] for i in range(3) for r in net.events(i, "outer_step") if r["outer_step"] == last]
    assert first and final and len(set(first)) == 1 and len(set(final)) == 1
    assert final[0] < first[0] - 0.05, (first, final)

    # The ledger: every planned shard completed exactly once; credits equal the shards' tokens.
    with net.db() as db:
        completed = db.execute("SELECT shard_id, tokens FROM completed_shards").fetchall()
        credits = dict(db.execute("SELECT shard_id, SUM(tokens) FROM credits GROUP BY shard_id").fetchall())
        peer_credits = dict(db.execute("SELECT peer_id, tokens FROM peers").fetchall())
        left = db.execute("SELECT COUNT(*) FROM peers WHERE state = 'left'").fetchone()[0]
        global_tokens = int(db.execute("SELECT value FROM meta WHERE key = 'global_tokens'").fetchone()[0])
    completed_ids = [shard_id for shard_id, _ in completed]
    assert sorted(completed_ids) == sorted(truth), "every planned shard completed, none twice"
    assert {shard_id: tokens for shard_id, tokens in completed} == {k: v[1] for k, v in truth.items()}
    assert credits == {k: v[1] for k, v in truth.items()}
    assert global_tokens == sum(v[1] for v in truth.values()) == sum(peer_credits.values())
    assert left == 3
    # Every full window of every shard was trained exactly once, by some peer.
    trained = [r["tokens_trained"] for i in range(3) for r in net.events(i, "leave")]
    assert len(trained) == 3 and sum(trained) == sum(v[0] for v in truth.values())


# ---------------------------------------------------------------------- 2. a peer dies mid-round
def lease_outcome(db: sqlite3.Connection, peer_id: str) -> dict[str, Any]:
    """Per shard that ``peer_id`` was credited for but did not complete: who completed it and the credits."""
    rows = db.execute("SELECT shard_id, peer_id, SUM(tokens) FROM credits GROUP BY shard_id, peer_id").fetchall()
    credits: dict[str, dict[str, int]] = defaultdict(dict)
    for shard_id, holder, tokens in rows:
        credits[shard_id][holder] = tokens
    completed = dict(db.execute("SELECT shard_id, peer_id FROM completed_shards").fetchall())
    completed_tokens = dict(db.execute("SELECT shard_id, tokens FROM completed_shards").fetchall())
    return {shard_id: {"credits": per_peer, "completed_by": completed.get(shard_id),
                       "completed_tokens": completed_tokens.get(shard_id)}
            for shard_id, per_peer in credits.items()
            if peer_id in per_peer and completed.get(shard_id) != peer_id}


def test_a_peer_killed_mid_round_does_not_stall_the_others_and_a_joiner_downloads_the_state(
        tmp_path: Path, procs) -> None:
    net = Net(tmp_path, procs, spec=BUNDLED, peers=3)
    try:
        for _ in range(3):
            net.start_peer()
        victim = 2

        # SIGKILL the victim's whole process group once the group of its second round is fixed: the
        # all-reduce (about 2 s of lattice encoding and transfer here) is then in flight.
        group = net.wait_for("the victim's group of round 2", lambda: next(
            (r for r in net.events(victim, "group") if r["round"] >= 2), None))
        net.network.signal_peer(victim, signal.SIGKILL)
        killed_at = time.time()
        doomed = group["round"]
        victim_id = net.events(victim, "state")[0]["peer_id"]
        net.network.peers[victim].wait(timeout=30)
        assert not [r for r in net.events(victim, "round") if r["round"] == doomed], "killed after its round"

        # The two others end that round within the averaging timeout, then keep training together.
        survivors = (0, 1)
        ends = [net.wait_for(f"peer {i} to end round {doomed}", lambda i=i: next(
            (r for r in net.events(i, "round") if r["round"] == doomed), None)) for i in survivors]
        for end in ends:
            assert end["allreduce_s"] <= AVERAGING_TIMEOUT_S - MATCHMAKING_S + 1.0, end
            assert end["seconds"] <= AVERAGING_TIMEOUT_S + 3.0, end
            assert end["t"] - killed_at <= AVERAGING_TIMEOUT_S + 3.0, end
        later = doomed + 1
        net.wait_for("both survivors past the doomed round", lambda: all(
            any(r["outer_step"] >= later for r in net.events(i, "outer_step")) for i in survivors))

        # The coordinator expires the victim's lease; a survivor finishes its shard from where it stopped.
        def reassigned() -> dict[str, Any] | None:
            with net.db() as db:
                state = db.execute("SELECT state FROM peers WHERE peer_id = ?", (victim_id,)).fetchone()[0]
                outcome = lease_outcome(db, victim_id)
            done = {k: v for k, v in outcome.items() if v["completed_by"] is not None}
            return done if state == "lost" and done else None

        done = net.wait_for("the victim's shard to be completed by another peer", reassigned)
        tokenizer = load_tokenizer(TOKENIZER)
        shards = {s.shard_id: s for s in plan_shards(BUNDLED, docs_per_shard=DOCS_PER_SHARD)}
        for shard_id, outcome in done.items():
            assert outcome["completed_by"] != victim_id
            reader = ShardReader(shards[shard_id], tokenizer=tokenizer, seq_len=SEQ_LEN,
                                 validation_fraction=VALIDATION_FRACTION)
            for _ in reader:
                pass
            final = reader.position.tokens_consumed
            # the victim's credit ends at its last report; the next holder resumed exactly there
            assert sum(outcome["credits"].values()) == outcome["completed_tokens"] == final, outcome
            assert outcome["credits"][victim_id] > 0

        # A new peer joins later: it downloads the current state, and its hash is the others'.
        joiner_proc = net.start_peer()
        joiner = 3
        state = net.wait_for("the joiner's downloaded state", lambda: next(
            (r for r in net.events(joiner, "state") if r["source"] == "download"), None))
        synced = net.events(joiner, "state_sync")[0]
        assert synced["bytes"] > 0 and synced["seconds"] > 0 and state["outer_step"] >= later
        net.wait_for("the joiner's first averaged outer step", lambda: next(
            (r for r in net.events(joiner, "outer_step") if r["group_size"] >= 2), None))
        assert joiner_proc.poll() is None
    finally:
        net.stop()

    table = hashes_by_step(net.events, range(4))
    assert_identical_per_step(table)
    assert table[state["outer_step"]][joiner] == set().union(
        *(table[state["outer_step"]][i] for i in survivors))
    first_step = net.events(joiner, "first_step")
    assert first_step and first_step[0]["seconds"] > synced["seconds"]


# ---------------------------------------------------------------------- 3. Ctrl+C
def released_at(db: sqlite3.Connection, shard_id: str, docs: int, tokens: int, leaver: str) -> str | None:
    """Where a released shard is now, if it resumes at (docs, tokens): waiting in the queue, leased again
    from there, or completed by another peer that was credited exactly the rest."""
    queued = db.execute("SELECT docs, tokens FROM queued_shards WHERE shard_id = ?", (shard_id,)).fetchone()
    if queued is not None:
        return "queued" if tuple(queued) == (docs, tokens) else None
    lease = db.execute("SELECT start_docs, start_tokens, peer_id FROM leases WHERE shard_id = ?",
                       (shard_id,)).fetchone()
    if lease is not None:
        return "leased again" if tuple(lease[:2]) == (docs, tokens) and lease[2] != leaver else None
    done = db.execute("SELECT peer_id, tokens FROM completed_shards WHERE shard_id = ?", (shard_id,)).fetchone()
    if done is not None and done[0] != leaver:
        rest = db.execute("SELECT SUM(tokens) FROM credits WHERE shard_id = ? AND peer_id = ?",
                          (shard_id, done[0])).fetchone()[0]
        return "completed" if rest == done[1] - tokens else None
    return None


def test_a_frozen_peer_resyncs_and_ctrl_c_releases_its_lease_and_leaves_within_ten_seconds(
        tmp_path: Path, procs) -> None:
    net = Net(tmp_path, procs, spec=BUNDLED, peers=2)
    try:
        net.start_peer("--straggler-wait", str(FAST_STRAGGLER_WAIT_S))  # does not wait long for peer 1
        net.start_peer()
        leaver = 1
        net.wait_for("an outer step of peer 1", lambda: net.events(leaver, "outer_step"))
        peer_id = net.events(leaver, "state")[0]["peer_id"]

        def training_on_a_lease() -> bool:
            with net.db() as db:
                held = db.execute("SELECT COUNT(*) FROM leases WHERE peer_id = ? AND tokens > start_tokens",
                                  (peer_id,)).fetchone()[0]
            return held > 0 and net.events(leaver)[-1]["event"] in ("outer_step", "state")

        # Freeze peer 1 (a laptop lid closed) past its lease timeout and a round of peer 0's.
        net.wait_for("peer 1 training on a lease it reported progress on", training_on_a_lease)
        frozen_at = net.events(leaver)[-1]["outer_step"]
        net.network.signal_peer(leaver, signal.SIGSTOP)
        net.wait_for("peer 0 to apply a round without peer 1", lambda: any(
            r["outer_step"] > frozen_at for r in net.events(0, "outer_step")), timeout=60)
        net.wait_for("the coordinator to count peer 1 lost", lambda: net.db().execute(
            "SELECT state FROM peers WHERE peer_id = ?", (peer_id,)).fetchone()[0] == "lost", timeout=30)
        net.network.signal_peer(leaver, signal.SIGCONT)
        # It drops the lease it lost, downloads the state it missed and averages with peer 0 again.
        resync = net.wait_for("peer 1 to re-sync", lambda: next(
            (r for r in net.events(leaver, "state") if r["source"] == "resync"), None), timeout=60)
        assert resync["outer_step"] > frozen_at
        # the re-synced state is checkpointed at once: a restart now would resume from it, not from before
        resynced = net.network.peer_workdir(leaver) / "checkpoints" / f"step-{resync['outer_step']:08d}"
        net.wait_for("the re-synced state's checkpoint", lambda: (resynced / "manifest.json").is_file(), timeout=20)
        net.wait_for("peer 1 to average with peer 0 again", lambda: any(
            r["outer_step"] > resync["outer_step"] and r["group_size"] == 2
            for r in net.events(leaver, "outer_step")), timeout=90)
        assert "is no longer ours" in (net.workdir / f"peer-{leaver}.log").read_text()

        # Ctrl+C: in its terminal it reaches the whole process group.
        net.wait_for("peer 1 training on a lease again", training_on_a_lease)
        proc = net.network.peers[leaver]
        net.network.signal_peer(leaver, signal.SIGINT)
        sent = time.monotonic()
        code = proc.wait(timeout=LEAVE_DEADLINE_S * 3)
        took = time.monotonic() - sent
        assert code == 0, net.logs()
        assert took <= LEAVE_DEADLINE_S, f"left after {took:.1f} s"
        # hivemind's children (DHT process, p2pd) went with it
        net.wait_for("the peer's process group to be empty", lambda: _group_gone(proc.pid), timeout=5)

        leave = net.events(leaver, "leave")
        assert len(leave) == 1 and leave[0]["reason"] == "stopped" and leave[0]["released"], leave
        assert leave[0]["tokens_lost"] > 0
        with net.db() as db:
            state = db.execute("SELECT state FROM peers WHERE peer_id = ?", (peer_id,)).fetchone()[0]
            assert state == "left"  # it said Leave: not "lost", which an expired lease would leave
            for item in leave[0]["released"]:
                # the shard's credits up to the released lease add up to the released position exactly
                number = int(item["lease_id"].lstrip("L"))
                rows = db.execute("SELECT lease_id, tokens FROM credits WHERE shard_id = ?",
                                  (item["shard_id"],)).fetchall()
                credited = sum(tokens for lease_id, tokens in rows if int(lease_id.lstrip("L")) <= number)
                assert credited == item["tokens_consumed"] > 0, (item, rows)
                assert released_at(db, item["shard_id"], item["docs_consumed"], item["tokens_consumed"],
                                   peer_id), item
        log = (net.workdir / "coordinator.log").read_text()
        assert f"peer {peer_id} left: stopped" in log
        assert "left the run (stopped)" in (net.workdir / f"peer-{leaver}.log").read_text()
        assert net.network.peers[0].poll() is None  # the other peer trains on
    finally:
        net.stop()
    assert_identical_per_step(hashes_by_step(net.events, range(2)))
    with net.db() as db:  # nothing was credited twice, though a lease expired under a live peer
        over = db.execute("SELECT c.shard_id FROM completed_shards c JOIN (SELECT shard_id, SUM(tokens) AS t "
                          "FROM credits GROUP BY shard_id) s ON s.shard_id = c.shard_id WHERE s.t != c.tokens"
                          ).fetchall()
    assert over == []


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False

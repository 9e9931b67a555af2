# SPDX-License-Identifier: AGPL-3.0-or-later
"""The network the way volunteers run it: separate hosts, most behind a home NAT, on limited uplinks.

Every host is a Linux network namespace of :mod:`lila_run.testbed` (an "internet" bridge; public hosts;
home hosts behind their own nftables NAT router, no inbound); every peer runs ``lila-peer join
10.200.0.10:7600`` with the token in its environment and no other networking flag. Uplinks are shaped
with ``tbf`` (no latency: this kernel has no netem).

1. Two public and two NAT'd peers, three outer steps: every round a group of four (a peer that came up
   after the others averaged the first round downloads that step instead), one parameter hash per step on
   every peer, every peer leaves holding step 3, no shard completed twice; the NAT'd peers are really
   unreachable from the internet (a dial to the port their router would have to forward fails) and said so
   in one log line.
2. A public peer SIGKILLed in the middle of a round: the others end the round and go on; a NAT'd peer
   joining late downloads the state through its NAT and holds the same hash as the others.
3. Every peer NAT'd, only the coordinator public: the peers should reach each other through the
   coordinator's circuit relay and average in groups of three — a strict xfail today (see its reason).
4. The two-host split: two public peers on default flags average in groups of two; with the old default
   ``--host 127.0.0.1`` they train alone, say so in an error line, and the coordinator reports the split on
   ``/api/status``.

Tests skip where namespaces cannot be made (not root), and fail instead under ``LILA_REQUIRE_TESTBED=1``
(CI).
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lila_run.harness import small_run, write_corpus, write_run_config
from lila_run.internet import HOME, PUBLIC, InternetNetwork, Links
from lila_run.local_network import NetworkOptions
from lila_run.testbed import Testbed
from peer.events import EVENTS_FILE, read_events
from tests.helpers.runs import assert_identical_per_step, hashes_by_step, wait_until
from tests.helpers.testbed import require_testbed, try_connect

pytestmark = pytest.mark.timeout(600)

TOKENIZER = "fineweb-edu-2048"
SEQ_LEN = 32  # 3 peers x 150 steps x 32 tokens a round: the 116 training documents (103 k tokens) last ~7 rounds
INNER_STEPS = 150  # a first inner period longer than a NAT'd peer's extra start-up (one dial-back timeout)
BATCH = 1
MATCHMAKING_S = 2.0
AVERAGING_TIMEOUT_S = 20.0
HEARTBEAT_S = 0.5
LEASE_TIMEOUT_S = 5.0
LINKS = Links(uplink="20mbit", downlink="100mbit")
RUN_TIMEOUT_S = 240.0
UP_TIMEOUT_S = 90.0
POLL_S = 0.1
UNREACHABLE = re.compile(r"could not dial (?P<host>[\d.]+):(?P<port>\d+)")


@pytest.fixture
def bed() -> Iterator[Testbed]:
    require_testbed()
    with Testbed() as testbed:
        yield testbed


class Net:
    """An :class:`InternetNetwork` on ``bed`` plus the readers these tests need."""

    def __init__(self, tmp_path: Path, bed: Testbed, *, max_outer_steps: int | None) -> None:
        self.workdir = tmp_path / "net"
        self.workdir.mkdir()
        spec = write_corpus(tmp_path / "corpus.jsonl", docs=150)
        run = small_run(
            name="internet-test", sources={"corpus": spec},
            stage={"name": "all", "tokens": 10_000_000, "seq_len": SEQ_LEN},
            data={"tokenizer": TOKENIZER, "docs_per_shard": 3, "validation_fraction": 0.2, "validation_max_docs": 4},
            diloco={"inner_steps": INNER_STEPS, "batch_size": BATCH, "matchmaking_time_s": MATCHMAKING_S,
                    "averaging_timeout_s": AVERAGING_TIMEOUT_S},
            codec={"name": "e8", "bits": 4, "block_size": 64}, trust={"aggregator": "mean"},
            coordinator={"heartbeat_interval_s": HEARTBEAT_S, "lease_timeout_s": LEASE_TIMEOUT_S},
        )
        self.network = InternetNetwork(
            NetworkOptions(config=write_run_config(run, tmp_path), workdir=self.workdir, peers=0,
                           max_outer_steps=max_outer_steps, threads_per_peer=1,
                           extra_peer_args=("--no-progress", "--eval-every", "0")),
            bed=bed)
        self.network.start_coordinator()

    def start(self, kind: str, *extra: str, wait: bool = True) -> int:
        """Start a peer on a new ``kind`` host; with ``wait``, return once it is on the DHT."""
        index = len(self.network.peers)
        self.network.start_peer(index, kind=kind, links=LINKS, extra_args=extra)
        if wait:
            self.wait_for(f"peer {index} on the DHT", lambda: "averaging as libp2p peer" in self.log(index),
                          timeout=UP_TIMEOUT_S)
        return index

    def log(self, index: int) -> str:
        path = self.workdir / f"peer-{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, index: int, event: str | None = None) -> list[dict[str, Any]]:
        return read_events(self.network.peer_workdir(index) / EVENTS_FILE, event)

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = RUN_TIMEOUT_S) -> Any:
        return wait_until(what, predicate, timeout=timeout, context=self.logs, poll_s=POLL_S)

    def wait_exit(self, indices: list[int]) -> list[int | None]:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for index in indices:
            try:
                self.network.peers[index].wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return [self.network.peers[i].poll() for i in indices]

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"==> {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.workdir / 'coordinator.db'}?mode=ro", uri=True, timeout=10)


def assert_no_shard_twice(net: Net) -> None:
    with net.db() as db:
        completed = [row[0] for row in db.execute("SELECT shard_id FROM completed_shards")]
    assert completed, "no shard was completed"
    assert not [s for s, n in Counter(completed).items() if n > 1], f"shards completed twice: {completed}"


# ---------------------------------------------------------------------- 1. public + NAT'd
def last_state(net: Net, index: int) -> tuple[int, str]:
    """(outer step, params sha256) of the last parameters peer ``index`` held (after a round or a download)."""
    held = [(r["outer_step"], r["params_sha256"]) for r in net.events(index) if r["event"] in ("state", "outer_step")]
    assert held, net.log(index)
    return held[-1]


def test_two_public_and_two_natted_peers_average_in_groups_of_four(tmp_path: Path, bed: Testbed) -> None:
    net = Net(tmp_path, bed, max_outer_steps=3)
    try:
        # All at once, as volunteers would; the NAT'd peers first (one dial-back timeout longer to come up).
        home = [net.start(HOME, wait=False), net.start(HOME, wait=False)]
        public = [net.start(PUBLIC, wait=False), net.start(PUBLIC, wait=False)]
        peers = home + public
        assert net.wait_exit(peers) == [0, 0, 0, 0], net.logs()

        for index in home:
            assert "not reachable from the internet: taking part as a relayed peer" in net.log(index)
            match = UNREACHABLE.search(net.log(index))
            assert match and match["host"] == net.network.hosts[index].public_address, net.log(index)
            attempt = try_connect(bed, net.network.coordinator_host, match["host"], int(match["port"]), timeout_s=3)
            assert attempt.returncode != 0, "a NAT'd peer's port is reachable from the internet"
        for index in public:
            assert f"reachable directly at /ip4/{net.network.hosts[index].address}/tcp/" in net.log(index)
    finally:
        net.network.stop()

    # A peer that came up after the others' first round (a NAT'd one waits one dial-back timeout longer)
    # downloads outer step 1 instead of averaging it; every round after that has all four.
    for index in peers:
        applied = {r["round"]: r["group_size"] for r in net.events(index, "round") if r["applied"]}
        assert applied.get(2) == 4 and applied.get(3) == 4, (index, applied)
        if 1 not in applied:
            assert any(r["outer_step"] == 1 and r["source"] != "init" for r in net.events(index, "state")), (
                f"peer {index} neither averaged nor downloaded outer step 1\n{net.log(index)[-3000:]}")
        assert last_state(net, index)[0] == 3, (index, last_state(net, index))
    table = hashes_by_step(net.events, peers)
    assert sorted(table) == [0, 1, 2, 3]
    assert all(len(per_peer) == 4 for step, per_peer in table.items() if step >= 1), dict(table)
    assert_identical_per_step(table)
    assert_no_shard_twice(net)


# ---------------------------------------------------------------------- 2. churn across hosts
def test_a_public_peer_killed_mid_round_and_a_natted_late_joiner(tmp_path: Path, bed: Testbed) -> None:
    net = Net(tmp_path, bed, max_outer_steps=5)
    try:
        home = net.start(HOME, wait=False)
        survivor, victim = net.start(PUBLIC, wait=False), net.start(PUBLIC, wait=False)
        # Kill the victim's process group once it is inside round 2 (it logged the round's start).
        net.wait_for("round 2 on the victim", lambda: any(r["round"] == 2 for r in net.events(victim, "round_start")))
        net.network.signal_peer(victim, signal.SIGKILL)
        late = net.start(HOME)
        assert net.wait_exit([home, survivor, late]) == [0, 0, 0], net.logs()
    finally:
        net.network.stop()

    for index in (home, survivor, late):  # --max-outer-steps 5: every peer leaves holding outer step 5
        assert last_state(net, index)[0] == 5, (index, last_state(net, index), net.log(index)[-3000:])
    assert max(r["outer_step"] for r in net.events(survivor, "outer_step")) == 5  # averaged to the end
    synced = [r for r in net.events(late, "state") if r.get("source") != "init"]
    assert synced, f"the late NAT'd joiner never downloaded the state\n{net.log(late)[-3000:]}"
    table = hashes_by_step(net.events, [home, survivor, late])
    assert_identical_per_step({step: per for step, per in table.items() if step >= synced[0]["outer_step"]})
    assert synced[0]["params_sha256"] in set().union(*table[synced[0]["outer_step"]].values())
    assert_no_shard_twice(net)


# ---------------------------------------------------------------------- 3. everyone NAT'd
@pytest.mark.xfail(strict=True, reason=(
    "no circuit-relay reservation: hivemind's p2pd (go-libp2p 0.32.1) announced no /p2p-circuit address within "
    "8 s of start with -autoRelay=1 and the coordinator as trusted relay, and hivemind's Python multiaddr "
    "encodes Ed25519 peer ids in /p2p/ as CIDs, which p2pd's Connect rejects; see docs/decisions/0004"))
def test_every_peer_natted_averages_through_the_coordinators_relay(tmp_path: Path, bed: Testbed) -> None:
    net = Net(tmp_path, bed, max_outer_steps=3)
    try:
        peers = [net.start(HOME, wait=False) for _ in range(3)]
        assert net.wait_exit(peers) == [0, 0, 0], net.logs()
    finally:
        net.network.stop()
    for index in peers:
        rounds = net.events(index, "round")
        assert [r["round"] for r in rounds] == [1, 2, 3], rounds
        assert all(r["applied"] and r["group_size"] == 3 for r in rounds), rounds
    assert_identical_per_step(hashes_by_step(net.events, peers))


# ---------------------------------------------------------------------- 4. the two-host split
@pytest.mark.parametrize("flags", [(), ("--host", "127.0.0.1")], ids=["default-flags", "old-default-host"])
def test_two_hosts_average_together_and_a_split_is_reported(tmp_path: Path, bed: Testbed, flags: tuple[str, ...]
                                                             ) -> None:
    """The split once seen across two hosts: with the old default (``--host 127.0.0.1``) each peer offered an
    address only it could dial and every round was a group of one while both exited 0. Now the default
    averages; the old setting is caught by the dial-back check, logged as an error by the peers and reported
    by the coordinator as a split."""
    net = Net(tmp_path, bed, max_outer_steps=2)
    try:
        peers = [net.start(PUBLIC, *flags, wait=False), net.start(PUBLIC, *flags, wait=False)]
        assert net.wait_exit(peers) == [0, 0], net.logs()
        status = net.network.status()
    finally:
        net.network.stop()
    sizes = [r["group_size"] for i in peers for r in net.events(i, "round")]
    assert status is not None, net.logs()
    if not flags:
        assert sizes == [2, 2, 2, 2], sizes
        assert_identical_per_step(hashes_by_step(net.events, peers))
        assert status["splits"]["count"] == 0, status["splits"]
    else:
        assert sizes and set(sizes) == {1}, sizes
        assert all("not reachable from the internet" in net.log(i) for i in peers)
        assert any("averaged alone although" in net.log(i) for i in peers), net.logs()
        assert status["splits"]["count"] >= 1, status["splits"]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Multi-process tests of the averaging layer on 127.0.0.1 with real hivemind DHTs.

The test process runs the bootstrap DHT (and plays intruder or state downloader); each peer is this file
run as a module (``python -m tests.integration.test_averaging_procs WORKDIR NAME``) in its own process group, driven
by ``WORKDIR/plan.json`` and talking back through files in WORKDIR. Peers are started with the ``procs``
fixture, which kills their whole process groups (DHT process and p2pd included) when the test ends.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lila_net.dht.keys import protocol
from lila_run.harness import RawCodec, signal_group
from peer.averaging import (
    Averager,
    AveragingConfig,
    StateSnapshot,
    StateSync,
    StateSyncConfig,
    StateSyncError,
    StaticTokenAuthorizer,
    Transport,
    describe,
    get_aggregator,
    params_hash,
)
from peer.averaging.allreduce import part_bounds
from peer.averaging.rpc import call
from peer.averaging.wire import RemoteError
from tests.helpers.transports import local_transports

RUN_ID = "test-run"
GOOD = b"good-token"
BAD = b"stolen?"
NUMEL = 10_001  # odd, so parts differ in size
STATE_NUMEL = 1_000_000  # 4 MB of float32: several 1 MiB chunks
WORKER_TIMEOUT_S = 150  # hard cap on a worker's life (SIGALRM)
WAIT_S = 90.0  # the longest the test waits for any one file
POLL_S = 0.05
HANG_S = 120.0
CONFIG = dict(
    matchmaking_time=2.0, join_timeout=1.5, request_timeout=1.0, part_timeout=5.0, result_timeout=5.0
)
STATE_CONFIG = dict(request_timeout=3.0, chunk_timeout=3.0, total_timeout=30.0, announce_period=5.0)

pytestmark = pytest.mark.timeout(240)


# ============================================================================ codecs
def lattice_codec_available() -> bool:
    try:
        from lila_codec import get_codec  # noqa: F401
    except ImportError:
        return False
    return True


class HangingCodec:
    """Freezes the peer mid-round: once the group is fixed its first encode never returns, so it sends
    nothing and never answers for its part, while its loop keeps accepting the others' contributions."""

    def __init__(self, inner: Any, marker: Path) -> None:
        self.inner = inner
        self.marker = marker

    def encode(self, tensor: torch.Tensor, *, seed: int = 0) -> bytes:
        self.marker.write_text("1")
        time.sleep(HANG_S)  # until the test kills this process group
        return self.inner.encode(tensor, seed=seed)

    def decode(self, payload: bytes) -> torch.Tensor:
        return self.inner.decode(payload)


def make_codec(name: str) -> Any:
    if name == "e8":
        from lila_codec import get_codec

        return get_codec("e8", bits=4)
    return RawCodec({"fp32": torch.float32, "fp16": torch.float16}[name])


def peer_vector(seed: int, numel: int = NUMEL) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(seed))


def attacked(vector: torch.Tensor, attack: str | None) -> torch.Tensor:
    if attack == "nan":
        vector = vector.clone()
        vector[::7] = math.nan  # NaNs in every part
    elif attack == "scale100":
        vector = vector * 100
    return vector


# ============================================================================ the worker (a peer process)
def _wait_for(path: Path, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(POLL_S)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)


def worker_main(workdir: Path, name: str) -> int:
    signal.alarm(WORKER_TIMEOUT_S)
    logging.basicConfig(
        filename=workdir / f"{name}.log",
        level=logging.INFO,
        format=f"%(asctime)s {name} %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("hivemind").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    plan = json.loads((workdir / "plan.json").read_text())
    me = plan["peers"][name]
    authorize = StaticTokenAuthorizer([GOOD])
    transport = Transport.create(initial_peers=plan["initial_peers"])
    averager = Averager(
        transport,
        run_id=RUN_ID,
        credential=GOOD,
        authorize=authorize,
        max_numel=NUMEL,
        config=AveragingConfig(**CONFIG),
    )
    _write_json(workdir / f"{name}.ready.json", {"peer_id": transport.peer_id})
    _wait_for(workdir / "go")
    for spec in me.get("rounds", []):
        k = spec["round"]
        vector = attacked(peer_vector(spec["seed"]), spec.get("attack"))
        codec = make_codec(spec["codec"])
        if spec.get("hang_in_encode"):
            codec = HangingCodec(codec, workdir / f"{name}.hung")
        groups: list[Any] = []
        result = averager.average(
            k, vector, codec=codec, aggregator=get_aggregator(spec["aggregator"]), on_group=groups.append
        )
        assert result.group is None or groups == [result.group]
        summary = describe(result)
        summary["members"] = [] if result.group is None else list(result.group.members)
        if result.average is not None:
            (workdir / f"{name}.round{k}.bin").write_bytes(result.average.numpy().tobytes())
            digest = params_hash([result.average])
            if spec.get("corrupt_hash"):
                digest = params_hash([result.average + 1])
            report = averager.verify_round(k, digest, members=summary["members"])
            summary["verify"] = {
                "consistent": report.consistent,
                "i_agree": report.i_agree,
                "disagreeing": list(report.disagreeing),
                "missing": list(report.missing),
            }
        _write_json(workdir / f"{name}.round{k}.json", summary)
    state = me.get("state")
    if state is not None:
        sync = StateSync(
            transport,
            run_id=RUN_ID,
            credential=GOOD,
            authorize=authorize,
            config=StateSyncConfig(
                max_upload_bytes_per_s=state.get("max_upload_bytes_per_s"), **STATE_CONFIG
            ),
        )
        sync.publish(state_snapshot(state["seed"]))
        (workdir / f"{name}.serving").write_text("1")
    _wait_for(workdir / "stop", timeout=WORKER_TIMEOUT_S)
    averager.shutdown()
    transport.shutdown()
    return 0


def state_snapshot(seed: int) -> StateSnapshot:
    return StateSnapshot(
        tensors={"w": peer_vector(seed, STATE_NUMEL), "step": torch.tensor(seed, dtype=torch.int64)},
        metadata={"outer_step": 4},
    )


# ============================================================================ test-side helpers
class Swarm:
    """The test's view of the worker peers: start them, wait for their files, read their results."""

    def __init__(self, procs: Any, workdir: Path, bootstrap: Transport) -> None:
        self.procs = procs
        self.workdir = workdir
        self.bootstrap = bootstrap
        self.popen: dict[str, Any] = {}
        self.ids: dict[str, str] = {}

    def start(self, peers: dict[str, dict]) -> None:
        _write_json(
            self.workdir / "plan.json", {"initial_peers": self.bootstrap.visible_maddrs(), "peers": peers}
        )
        for name in peers:
            with (
                open(self.workdir / f"{name}.out", "w") as out,
                open(self.workdir / f"{name}.err", "w") as err,
            ):
                self.popen[name] = self.procs.spawn(
                    [sys.executable, "-m", __name__, str(self.workdir), name],
                    stdout=out,
                    stderr=err,
                )
        for name in peers:
            self.ids[name] = self.wait_json(f"{name}.ready.json")["peer_id"]
        (self.workdir / "go").write_text("1")

    def wait_json(self, filename: str, timeout: float = WAIT_S) -> dict:
        path = self.workdir / filename
        deadline = time.monotonic() + timeout
        while not path.exists():
            dead = [n for n, p in self.popen.items() if p.poll() not in (None, -signal.SIGKILL)]
            if dead or time.monotonic() > deadline:
                logs = {n: (self.workdir / f"{n}.err").read_text()[-2000:] for n in self.popen}
                raise AssertionError(f"{filename} never appeared (exited: {dead}); stderr tails: {logs}")
            time.sleep(POLL_S)
        return json.loads(path.read_text())

    def average(self, name: str, k: int) -> torch.Tensor:
        raw = (self.workdir / f"{name}.round{k}.bin").read_bytes()
        return torch.frombuffer(bytearray(raw), dtype=torch.float32)

    def kill(self, name: str) -> None:
        signal_group(self.popen[name], signal.SIGKILL)

    def stop(self) -> None:
        (self.workdir / "stop").write_text("1")


@pytest.fixture
def bootstrap() -> Any:
    with local_transports(1) as (transport,):
        yield transport


def state_downloader(transport: Transport) -> StateSync:
    """An authorized peer that downloads the state, with the test's timeouts."""
    return StateSync(transport, run_id=RUN_ID, credential=GOOD, authorize=StaticTokenAuthorizer([GOOD]),
                     config=StateSyncConfig(**STATE_CONFIG))


def rounds(*specs: dict) -> list[dict]:
    return [dict(spec, round=k) for k, spec in enumerate(specs)]


# ============================================================================ tests
def test_three_peers_identical_averages_robust_rules_and_refused_intruder(
    procs: Any, tmp_path: Path, bootstrap: Transport
) -> None:
    lossy = "e8" if lattice_codec_available() else "fp16"
    plans = {}
    for i, name in enumerate(["w0", "w1", "w2"]):
        attacker = name == "w2"
        plans[name] = {
            "rounds": rounds(
                {"seed": 100 + i, "codec": "fp32", "aggregator": "mean"},
                {"seed": 200 + i, "codec": lossy, "aggregator": "mean", "corrupt_hash": attacker},
                {
                    "seed": 300 + i,
                    "codec": "fp32",
                    "aggregator": "trimmed_mean",
                    "attack": "nan" if attacker else None,
                },
                {
                    "seed": 400 + i,
                    "codec": "fp32",
                    "aggregator": "centered_clip",
                    "attack": "scale100" if attacker else None,
                },
                {"seed": 500 + i, "codec": "fp32", "aggregator": "mean"},
            ),
            "state": {"seed": 7},
        }
    swarm = Swarm(procs, tmp_path, bootstrap)
    swarm.start(plans)
    names = ["w0", "w1", "w2"]
    ids = [swarm.ids[n] for n in names]
    vectors = {k: [peer_vector(100 * (k + 1) + i) for i in range(3)] for k in range(5)}

    # round 0: fp32 mean -> bitwise-identical on every peer and equal to the exact mean
    results = [swarm.wait_json(f"{n}.round0.json") for n in names]
    assert [r["status"] for r in results] == ["ok"] * 3
    assert all(r["members"] == sorted(ids) for r in results)
    averages = [swarm.average(n, 0) for n in names]
    assert torch.equal(averages[0], averages[1]) and torch.equal(averages[0], averages[2])
    torch.testing.assert_close(averages[0], torch.stack(vectors[0]).mean(0), rtol=0, atol=1e-6)
    assert all(r["verify"]["consistent"] and r["verify"]["missing"] == [] for r in results)
    # raw payload bytes: my slices of the 2 other parts out, my aggregated part out to 2 members
    # (2 * (N-1)/N of the 40 kB vector), the same amount in; frame headers and matchmaking add < 4 kB
    sizes = [4 * (stop - start) for start, stop in part_bounds(NUMEL, 3)]
    for name, result in zip(names, results, strict=True):
        mine = sorted(ids).index(swarm.ids[name])
        payload = sum(sizes) - sizes[mine] + 2 * sizes[mine]
        assert payload <= result["bytes_sent"] < payload + 4096, (result["bytes_sent"], payload)
        assert payload <= result["bytes_received"] < payload + 4096, (result["bytes_received"], payload)

    # round 1: lossy codec -> still bitwise-identical; w2 publishes a wrong hash and is named by everyone
    results = [swarm.wait_json(f"{n}.round1.json") for n in names]
    averages = [swarm.average(n, 1) for n in names]
    assert torch.equal(averages[0], averages[1]) and torch.equal(averages[0], averages[2])
    exact = torch.stack(vectors[1]).mean(0)
    relative = float((averages[0] - exact).norm() / exact.norm())
    assert relative < (0.2 if lossy == "e8" else 1e-3), (lossy, relative)
    assert relative > 0  # the codec really was lossy
    for name, result in zip(names, results, strict=True):
        assert result["verify"]["disagreeing"] == [swarm.ids["w2"]]
        assert result["verify"]["i_agree"] is (name != "w2")

    # round 2: trimmed mean, w2 sends NaNs: rejected by every owner, result = exact mean of w0 and w1
    results = [swarm.wait_json(f"{n}.round2.json") for n in names]
    averages = [swarm.average(n, 2) for n in names]
    assert torch.equal(averages[0], averages[1]) and torch.equal(averages[0], averages[2])
    torch.testing.assert_close(averages[0], (vectors[2][0] + vectors[2][1]) / 2, rtol=0, atol=1e-6)
    for result in results:
        assert result["status"] == "ok"
        assert sorted((r["part"], r["peer"], r["reason"]) for r in result["rejections"]) == [
            (part, swarm.ids["w2"], "non_finite") for part in range(3)
        ]

    # round 3: centered clip, w2 scales by 100: rejected on the norm bound with its ratio as evidence
    results = [swarm.wait_json(f"{n}.round3.json") for n in names]
    averages = [swarm.average(n, 3) for n in names]
    assert torch.equal(averages[0], averages[1]) and torch.equal(averages[0], averages[2])
    low = torch.minimum(vectors[3][0], vectors[3][1])
    high = torch.maximum(vectors[3][0], vectors[3][1])
    assert bool(((averages[0] >= low - 1e-6) & (averages[0] <= high + 1e-6)).all())
    for result in results:
        evidence = sorted((r["part"], r["peer"], r["reason"]) for r in result["rejections"])
        assert evidence == [(part, swarm.ids["w2"], "norm_ratio") for part in range(3)]
        assert all(60 < r["norm_ratio"] < 160 for r in result["rejections"])

    # round 4: an intruder with a refused credential joins the round: the honest group excludes it
    swarm.wait_json("w2.round3.json")
    intruder = Averager(
        bootstrap,
        run_id=RUN_ID,
        credential=BAD,
        authorize=lambda peer, credential: True,
        max_numel=NUMEL,
        config=AveragingConfig(**CONFIG),
    )
    try:
        mine = intruder.average(
            4, peer_vector(999), codec=make_codec("fp32"), aggregator=get_aggregator("mean")
        )
        results = [swarm.wait_json(f"{n}.round4.json") for n in names]
        averages = [swarm.average(n, 4) for n in names]
        assert all(r["members"] == sorted(ids) and r["status"] == "ok" for r in results)
        assert torch.equal(averages[0], averages[1]) and torch.equal(averages[0], averages[2])
        torch.testing.assert_close(averages[0], torch.stack(vectors[4]).mean(0), rtol=0, atol=1e-6)
        assert not mine.ok or mine.group_size == 1  # alone at best, never averaged with the honest peers

        # state: refused to the intruder, served to an authorized downloader, verified bit for bit
        for name in names:
            _wait_for(tmp_path / f"{name}.serving")
        # direct calls with the refused credential get an error reply, never data
        for name in ("join", "part", "state"):
            header = {"run": RUN_ID, "round": 4, "group_id": "0" * 16, "part": 0}
            with pytest.raises(RemoteError) as refused:
                bootstrap.run(
                    call(
                        intruder.endpoint, swarm.ids["w0"], protocol(RUN_ID, name), header=header, timeout=5.0
                    ),
                    timeout=10.0,
                )
            assert refused.value.code == "unauthorized", name
    finally:
        intruder.shutdown()
    thief = StateSync(bootstrap, run_id=RUN_ID, credential=BAD, authorize=StaticTokenAuthorizer([GOOD]))
    assert sorted(donor.peer_id for donor in thief.find_donors()) == sorted(ids)
    with pytest.raises(StateSyncError, match="unauthorized"):
        thief.download()
    sync = state_downloader(bootstrap)
    expected = state_snapshot(7)
    got = sync.download(expected_shapes={k: tuple(v.shape) for k, v in expected.tensors.items()})
    assert got.donor in ids and got.failed_donors == []
    assert got.snapshot.metadata == {"outer_step": 4}
    assert all(torch.equal(got.snapshot.tensors[k], v) for k, v in expected.tensors.items())
    swarm.stop()


def test_sigkilled_peer_does_not_stall_the_round_and_state_falls_back_to_another_donor(
    procs: Any, tmp_path: Path, bootstrap: Transport
) -> None:
    plans = {
        name: {
            "rounds": rounds(
                {"seed": 10 + i, "codec": "fp32", "aggregator": "mean", "hang_in_encode": name == "w2"},
                {"seed": 20 + i, "codec": "fp32", "aggregator": "mean"},
            ),
            # w0 serves slowly (2 MB/s for 4 MB) so it can be killed mid-transfer
            "state": {"seed": 3, "max_upload_bytes_per_s": 2e6 if name == "w0" else None},
        }
        for i, name in enumerate(["w0", "w1", "w2"])
    }
    swarm = Swarm(procs, tmp_path, bootstrap)
    swarm.start(plans)
    _wait_for(tmp_path / "w2.hung")
    swarm.kill("w2")  # mid-round: the group is fixed, w2 has sent nothing and will never answer
    survivors = ["w0", "w1"]
    results = [swarm.wait_json(f"{n}.round0.json") for n in survivors]
    members = sorted(swarm.ids.values())
    dead_part = members.index(swarm.ids["w2"])
    cfg = AveragingConfig(**CONFIG)
    for result in results:
        assert result["members"] == members
        assert result["status"] == "partial"
        assert result["failed_parts"] == [dead_part]
        assert result["allreduce_s"] < cfg.part_timeout + cfg.result_timeout + 1.0
    a, b = (swarm.average(n, 0) for n in survivors)
    assert a.numpy().tobytes() == b.numpy().tobytes()  # identical, NaN in the dead part included
    exact = (peer_vector(10) + peer_vector(11)) / 2
    for index, (start, stop) in enumerate(part_bounds(NUMEL, 3)):
        if index == dead_part:
            assert torch.isnan(a[start:stop]).all()
        else:
            torch.testing.assert_close(a[start:stop], exact[start:stop], rtol=0, atol=1e-6)

    # the next round goes on with the two survivors
    results = [swarm.wait_json(f"{n}.round1.json") for n in survivors]
    assert all(r["status"] == "ok" and len(r["members"]) == 2 for r in results)
    a, b = (swarm.average(n, 1) for n in survivors)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, (peer_vector(20) + peer_vector(21)) / 2, rtol=0, atol=1e-6)

    # state download: the first donor dies mid-transfer, the download completes from the second
    for name in survivors:
        _wait_for(tmp_path / f"{name}.serving")
    killed: list[int] = []

    def on_progress(donor: str, received: int, total: int) -> None:
        if donor == swarm.ids["w0"] and not killed:
            killed.append(received)
            swarm.kill("w0")

    sync = state_downloader(bootstrap)
    started = time.monotonic()
    got = sync.download(donors=[swarm.ids["w0"], swarm.ids["w1"]], on_progress=on_progress)
    assert killed and killed[0] < 4 * STATE_NUMEL
    assert got.donor == swarm.ids["w1"]
    assert [peer for peer, _ in got.failed_donors] == [swarm.ids["w0"]]
    assert time.monotonic() - started < STATE_CONFIG["chunk_timeout"] + 10.0
    expected = state_snapshot(3)
    assert all(torch.equal(got.snapshot.tensors[k], v) for k, v in expected.tensors.items())
    swarm.stop()


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1]), sys.argv[2]))

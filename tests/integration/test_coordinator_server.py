# SPDX-License-Identifier: AGPL-3.0-or-later
"""Integration tests: a real `lila-coordinator serve` process on 127.0.0.1 and real gRPC clients."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from lila_net.config import RunConfig
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_run.harness import LocalCoordinator, small_run, write_run_config

RPC_TIMEOUT_S = 10.0
SNAPSHOT_WAIT_S = 1.0  # several status refresh intervals (0.2 s in the run config)
DOCS_PER_SHARD = 50  # the bundled sample has 150 documents: 3 shards per stage


def run_config(*, rate: float = 50.0, burst: int = 100) -> RunConfig:
    return small_run(
        name="coordinator-test",
        data={"docs_per_shard": DOCS_PER_SHARD},
        stages=[
            {"name": "first", "tokens": 1_000_000, "seq_len": 64},
            {"name": "second", "tokens": 1_000_000, "seq_len": 128, "filter": "int_score >= 3"},
        ],
        coordinator={"heartbeat_interval_s": 1.0, "lease_timeout_s": 30.0, "rate_limit_per_s": rate,
                     "rate_limit_burst": burst, "max_message_bytes": 65536, "status_refresh_s": 0.2,
                     "max_leases_per_peer": 1},
    )


def cli_token(python: str, db: Path, label: str) -> str:
    """A join token made the way an organizer makes one: `lila-coordinator token create`."""
    out = subprocess.run(
        [python, "-m", "coordinator.cli", "token", "create", "--db", str(db), "--label", label],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


class Client:
    """A peer's view: one channel, the session token, and its report sequence number."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.session = ""
        self.peer_id = ""
        self.seq = 0

    def connect(self, address: str) -> None:
        self.channel.close()
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    @property
    def md(self) -> tuple:
        return (("authorization", f"Bearer {self.session}"),)

    def join(self, token: str, name: str, **kwargs) -> pb.JoinResponse:
        response = self.stub.Join(
            pb.JoinRequest(join_token=token, peer_name=name, **kwargs), timeout=RPC_TIMEOUT_S
        )
        self.session, self.peer_id, self.seq = (
            response.session_token,
            response.peer_id,
            response.last_report_seq,
        )
        return response

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, metadata=self.md, timeout=RPC_TIMEOUT_S)

    def lease(self) -> pb.LeaseShardResponse:
        return self.call("LeaseShard", pb.LeaseShardRequest())

    def report(self, method: str, lease_id: str, docs: int, tokens: int):
        self.seq += 1
        request_type = {
            "ReportProgress": pb.ReportProgressRequest,
            "CompleteShard": pb.CompleteShardRequest,
            "ReleaseShard": pb.ReleaseShardRequest,
        }[method]
        position = pb.ResumePosition(docs_consumed=docs, tokens_consumed=tokens)
        return self.call(method, request_type(lease_id=lease_id, report_seq=self.seq, position=position))

    def close(self) -> None:
        self.channel.close()


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def local_coordinator(tmp_path: Path, python: str, procs, **config) -> LocalCoordinator:
    """A coordinator of ``run_config(**config)`` in ``tmp_path`` (no DHT) with one join token, not started."""
    coordinator = LocalCoordinator(config=write_run_config(run_config(**config), tmp_path), workdir=tmp_path,
                                   python=python, spawn=procs.spawn)
    coordinator.create_token()
    return coordinator


@pytest.fixture
def coordinator(tmp_path, python, procs) -> LocalCoordinator:
    return local_coordinator(tmp_path, python, procs)


def test_join_lease_progress_complete(coordinator):
    token, info = coordinator.token, coordinator.start()
    client = Client(info["grpc"])
    joined = client.join(token, "alice", hardware=pb.Hardware(device_type="cpu", device_name="test CPU"))
    assert joined.peer_id.startswith("p-") and joined.current_outer_step == 0
    assert joined.heartbeat_interval_s == 1.0 and joined.lease_timeout_s == 30.0
    assert 'name = "coordinator-test"' in joined.run_config_toml
    assert list(joined.dht_initial_peers) == []
    lease = client.lease()
    assert lease.granted and lease.lease.lease_id == "L1"
    shard = lease.lease.shard
    assert (shard.source, shard.row_start, shard.row_stop) == (
        "bundled:fineweb-edu-sample",
        0,
        DOCS_PER_SHARD,
    )
    assert (lease.lease.stage_name, lease.lease.seq_len, lease.lease.doc_filter) == ("first", 64, "")
    progress = client.report("ReportProgress", "L1", 10, 700)
    assert (progress.credited_tokens, progress.duplicate, progress.peer_tokens_total) == (700, False, 700)
    client.seq -= 1  # a retried report (lost reply) is a duplicate
    again = client.report("ReportProgress", "L1", 10, 700)
    assert (again.credited_tokens, again.duplicate) == (0, True)
    done = client.report("CompleteShard", "L1", DOCS_PER_SHARD, 2000)
    assert (done.credited_tokens, done.peer_tokens_total) == (1300, 2000)
    beat = client.call("Heartbeat", pb.HeartbeatRequest(phase="training"))
    assert list(beat.lease_ids) == [] and beat.state == pb.PEER_STATE_ACTIVE
    client.call("ReportMetrics", pb.ReportMetricsRequest(outer_step=1, loss=4.5, tokens_per_s=250.0))
    assert client.call("ReportOuterStep", pb.ReportOuterStepRequest(outer_step=1)).current_outer_step == 1
    time.sleep(SNAPSHOT_WAIT_S)  # GetStatus serves the cached snapshot
    status = client.call("GetStatus", pb.GetStatusRequest())
    assert (status.run_name, status.model_preset, status.global_tokens, status.outer_step) == (
        "coordinator-test",
        "debug",
        2000,
        1,
    )
    assert status.peers_by_state["active"] == 1
    assert client.call("Leave", pb.LeaveRequest(reason="done")).peer_tokens_total == 2000
    code, details = _code(lambda: client.call("Heartbeat", pb.HeartbeatRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "call Join again" in details
    client.close()


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "clean-stop"])
def test_restart_mid_run_loses_nothing(coordinator, stop_signal):
    token, info, proc = coordinator.token, coordinator.start(), coordinator.proc
    alice, bob = Client(info["grpc"]), Client(info["grpc"])
    alice.join(token, "alice")
    bob.join(token, "bob")
    a_lease = alice.lease().lease
    b_lease = bob.lease().lease
    alice.report("ReportProgress", a_lease.lease_id, 7, 300)
    bob.report("CompleteShard", b_lease.lease_id, DOCS_PER_SHARD, 900)
    proc.send_signal(stop_signal)
    assert proc.wait(timeout=30) == (0 if stop_signal == signal.SIGTERM else -signal.SIGKILL)

    info, proc = coordinator.start(), coordinator.proc
    for client in (alice, bob):
        client.connect(info["grpc"])
    beat = alice.call("Heartbeat", pb.HeartbeatRequest())  # the old session token still works
    assert list(beat.lease_ids) == [a_lease.lease_id]
    resumed = alice.lease()
    assert resumed.lease.lease_id == a_lease.lease_id
    assert (resumed.lease.position.docs_consumed, resumed.lease.position.tokens_consumed) == (7, 300)
    done = alice.report("CompleteShard", a_lease.lease_id, DOCS_PER_SHARD, 1000)
    assert (done.credited_tokens, done.peer_tokens_total) == (700, 1000)
    next_lease = bob.lease().lease
    assert next_lease.shard.shard_id not in (a_lease.shard.shard_id, b_lease.shard.shard_id)
    assert next_lease.lease_id == "L3"
    time.sleep(SNAPSHOT_WAIT_S)
    status = json.loads(bob.call("GetStatus", pb.GetStatusRequest()).snapshot_json)
    assert status["global_tokens"] == 1900
    assert status["shards"]["completed"] == 2
    assert {p["name"]: p["tokens"] for p in status["leaderboard"]} == {"alice": 1000, "bob": 900}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    alice.close()
    bob.close()


def test_bad_requests_are_refused_and_server_keeps_serving(procs, python, tmp_path):
    coordinator = local_coordinator(tmp_path, python, procs, rate=5.0, burst=10)
    token, info, proc, db = coordinator.token, coordinator.start(), coordinator.proc, coordinator.db
    client = Client(info["grpc"])
    stub = client.stub

    code, details = _code(
        lambda: stub.Join(pb.JoinRequest(join_token="lila_jt_x_y", peer_name="x"), timeout=RPC_TIMEOUT_S)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "not known to this run" in details
    code, details = _code(
        lambda: stub.Join(pb.JoinRequest(join_token=token, peer_name=""), timeout=RPC_TIMEOUT_S)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("peer_name is empty")
    code, details = _code(
        lambda: stub.Join(
            pb.JoinRequest(join_token=token, peer_name="x", metrics_address="nope"), timeout=RPC_TIMEOUT_S
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("metrics_address='nope'")
    client.join(token, "mallory")

    # Unauthenticated calls.
    code, details = _code(lambda: stub.Heartbeat(pb.HeartbeatRequest(), timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "call Join first" in details
    forged = client.session[:-4] + ("AAAA" if not client.session.endswith("AAAA") else "BBBB")
    code, details = _code(
        lambda: stub.Heartbeat(
            pb.HeartbeatRequest(), metadata=(("authorization", f"Bearer {forged}"),), timeout=RPC_TIMEOUT_S
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "call Join again" in details

    # Malformed bytes, oversized message, invalid fields.
    raw = client.channel.unary_unary("/lila.v1.Coordinator/ReportProgress")
    code, details = _code(lambda: raw(b"\x0a\xff\xff\xff\x0f", metadata=client.md, timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid lila.v1.ReportProgressRequest" in details
    code, _ = _code(lambda: client.call("Heartbeat", pb.HeartbeatRequest(phase="x" * 100_000)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, details = _code(lambda: client.call("Heartbeat", pb.HeartbeatRequest(phase="x" * 40)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("phase has 40 characters")
    code, details = _code(lambda: client.call("ReportMetrics", pb.ReportMetricsRequest(loss=math.nan)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("loss=nan")
    code, details = _code(
        lambda: client.call("ReportProgress", pb.ReportProgressRequest(lease_id="L1", report_seq=1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("position is missing")
    code, details = _code(lambda: client.report("ReportProgress", "L1", -1, 5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("position.docs_consumed=-1")
    code, details = _code(lambda: client.report("ReportProgress", "L99", 1, 5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "call LeaseShard" in details
    lease = client.lease().lease
    code, details = _code(lambda: client.report("CompleteShard", lease.lease_id, 3, 5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "has 50 documents" in details

    # Rate limit: 10 calls at once, then 5/s.
    time.sleep(2.5)
    codes = []
    for _ in range(25):
        try:
            client.call("Heartbeat", pb.HeartbeatRequest())
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
            assert "rate limit of 5 calls/s per peer exceeded" in exc.details()
    assert codes.count("OK") >= 10 and codes.count("RESOURCE_EXHAUSTED") >= 10, codes
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}

    # Revoking the join token ends the session within the refresh interval.
    token_id = token.split("_")[2]
    subprocess.run(
        [python, "-m", "coordinator.cli", "token", "revoke", "--db", str(db), token_id],
        check=True,
        timeout=60,
        capture_output=True,
    )
    time.sleep(3.0)
    code, details = _code(lambda: client.call("Heartbeat", pb.HeartbeatRequest()))
    assert (
        code == grpc.StatusCode.UNAUTHENTICATED
        and f"join token {token_id} of this session was revoked" in details
    )

    # Still serving: a fresh token joins and works.
    other = Client(info["grpc"])
    other.join(cli_token(python, db, "second"), "honest")
    assert other.call("Heartbeat", pb.HeartbeatRequest()).state == pb.PEER_STATE_JOINING
    assert proc.poll() is None
    client.close()
    other.close()


@pytest.mark.slow
def test_dht_bootstrap_node_connects_joiners(coordinator, procs):
    # plain hivemind nodes (no credentials): the open mode; tests/integration/test_trust_auth.py covers the admitted-only one
    coordinator.dht, coordinator.extra = True, ("--no-dht-auth",)
    token, info, proc = coordinator.token, coordinator.start(), coordinator.proc
    assert info["dht_maddrs"] and all("/p2p/" in m for m in info["dht_maddrs"])
    assert 0 < info["dht_start_s"] < 60
    client = Client(info["grpc"])
    joined = client.join(token, "dht-user")
    assert list(joined.dht_initial_peers) == info["dht_maddrs"]
    client.close()
    # Two hivemind nodes that know only the coordinator's node find each other's records through it.
    code = (
        "import sys, hivemind\n"
        "peers = sys.argv[1:]\n"
        "a = hivemind.DHT(initial_peers=peers, host_maddrs=['/ip4/127.0.0.1/tcp/0'], start=True)\n"
        "b = hivemind.DHT(initial_peers=peers, host_maddrs=['/ip4/127.0.0.1/tcp/0'], start=True)\n"
        "now = hivemind.utils.get_dht_time()\n"
        "assert a.store('lila-test', 'hello', expiration_time=now + 60)\n"
        "print(b.get('lila-test', latest=True).value)\n"
        "a.shutdown(); b.shutdown()\n"
    )
    out = procs.spawn(
        [sys.executable, "-c", code, *joined.dht_initial_peers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = out.communicate(timeout=120)
    assert out.returncode == 0, stderr.decode()[-2000:]
    assert stdout.decode().strip() == "hello"
    proc.send_signal(signal.SIGTERM)  # clean stop takes the DHT node down too
    assert proc.wait(timeout=30) == 0

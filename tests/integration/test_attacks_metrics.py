# SPDX-License-Identifier: AGPL-3.0-or-later
"""Issue 16, finding 8 (SSRF and privacy), performed against a real ``lila-coordinator serve``: an admitted
peer declares the cloud metadata service as its metrics address. Before the fix the run's Prometheus was
offered ``169.254.169.254:80`` on ``/api/prometheus-targets`` and ``/api/status`` listed every volunteer's
address; now the target is the caller's own address with the declared port, and the public routes show no
address."""

from __future__ import annotations

import json
import time
import urllib.request

import grpc

from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_run.harness import LocalCoordinator, small_run, write_corpus, write_run_config

RPC_TIMEOUT_S = 10.0
WAIT_S = 15.0
METADATA_SERVICE = "169.254.169.254"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as response:
        return response.read().decode()


def test_a_peer_cannot_point_prometheus_at_another_host_nor_read_volunteers_addresses(tmp_path, python, procs):
    run = small_run(name="ssrf", sources={"docs": write_corpus(tmp_path / "docs.jsonl", docs=12)},
                    stage={"name": "all", "tokens": 100_000})
    coordinator = LocalCoordinator(config=write_run_config(run, tmp_path), workdir=tmp_path, python=python,
                                   spawn=procs.spawn)
    coordinator.create_token()
    info = coordinator.start()
    with grpc.insecure_channel(info["grpc"]) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        joined = stub.Join(pb.JoinRequest(join_token=coordinator.token, peer_name="mallory",
                                          metrics_address=f"{METADATA_SERVICE}:80"), timeout=RPC_TIMEOUT_S)
        md = (("authorization", f"Bearer {joined.session_token}"),)
        stub.Heartbeat(pb.HeartbeatRequest(phase="training"), metadata=md, timeout=RPC_TIMEOUT_S)

        deadline = time.monotonic() + WAIT_S
        targets: list = []
        while time.monotonic() < deadline and not targets:
            targets = json.loads(_get(f"http://{info['http']}/api/prometheus-targets"))
            time.sleep(0.2)
        status = _get(f"http://{info['http']}/api/status")
        page = _get(f"http://{info['http']}/")

    assert targets == [{"targets": ["127.0.0.1:80"],
                        "labels": {"job": "lila-peer", "peer_id": joined.peer_id, "peer_name": "mallory"}}]
    assert "mallory" in status and "mallory" in page
    for public in (status, page):
        assert METADATA_SERVICE not in public and "127.0.0.1:80" not in public
        assert "metrics_address" not in public

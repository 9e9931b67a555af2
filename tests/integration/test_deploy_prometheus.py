# SPDX-License-Identifier: AGPL-3.0-or-later
"""A real Prometheus, started from deploy/prometheus/prometheus.yml, scrapes a running coordinator and a
running peer's metrics endpoint, answers queries over both, and fires an alert of alerts.yml when its
condition is staged.

The test copy of the config differs from the shipped one only where it must: the coordinator's and
Prometheus's own addresses point at 127.0.0.1 ports, scrapes and rule evaluation run every second,
and every alert's ``for:`` is 0 s. The peer targets reach Prometheus the way they do in production:
deploy/prometheus/fetch_targets.py copies the coordinator's /api/prometheus-targets into the file_sd
directory. In the first test the "peer" is tests/helpers/deploy_peer_metrics.py, the real PeerMetrics registry
served with known values (so exact numbers can be asserted); the second runs a real training
`lila-peer join`. Needs Debian's ``prometheus`` package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_run.harness import free_port, start_coordinator
from tests.helpers.paths import REPO
from tests.helpers.prometheus import Prometheus, needs_prometheus, start_prometheus

PROM_DIR = REPO / "deploy" / "prometheus"
PEER_SCRIPT = REPO / "tests" / "helpers" / "deploy_peer_metrics.py"
FETCH_TARGETS = PROM_DIR / "fetch_targets.py"
RUN_CONFIG = REPO / "runs" / "cpu-demo.toml"
PEER_NAME = "deploy-test-peer"
STAGED_ALERT = "LilaPeerCountDropped"
TEST_INTERVAL = "1s"
WAIT_S = 60.0
POLL_S = 0.25
RPC_TIMEOUT_S = 10.0
HEARTBEAT_EVERY_S = 1.0
PROCESS_TIMEOUT_S = 180.0

pytestmark = [pytest.mark.slow, needs_prometheus]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_for(what: str, probe: Callable[[], Any], *, timeout_s: float = WAIT_S) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}; last: {last!r}")


def _firing(prometheus: Prometheus, name: str) -> list[dict[str, Any]]:
    alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def _sync_targets(python: str, coordinator_http: str, targets_file: Path) -> list[dict[str, Any]]:
    """Run deploy/prometheus/fetch_targets.py once: the coordinator's peer targets into the file_sd file."""
    run = subprocess.run(
        [python, str(FETCH_TARGETS), "--coordinator", f"http://{coordinator_http}", "--out", str(targets_file),
         "--once"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(targets_file.read_text())


def test_config_copy_changes_only_addresses_and_timing(tmp_path):
    config, rules = _test_copies(tmp_path, coordinator="127.0.0.1:1", prometheus="127.0.0.1:2")
    shipped = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    copy = yaml.safe_load(config.read_text())
    assert [j["job_name"] for j in copy["scrape_configs"]] == [
        j["job_name"] for j in shipped["scrape_configs"]
    ]
    assert copy["rule_files"] == shipped["rule_files"] == ["alerts.yml"]
    assert copy["scrape_configs"][1]["file_sd_configs"] == shipped["scrape_configs"][1]["file_sd_configs"]
    shipped_rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    copied_rules = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
    assert [r["expr"] for r in copied_rules] == [r["expr"] for r in shipped_rules]
    assert {r.get("for", "0s") for r in copied_rules} == {"0s"}


def _test_copies(tmp_path: Path, *, coordinator: str, prometheus: str) -> tuple[Path, Path]:
    """prometheus.yml and alerts.yml for the test, in ``tmp_path`` (returns their paths)."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=TEST_INTERVAL, scrape_timeout=TEST_INTERVAL, evaluation_interval=TEST_INTERVAL
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"lila-coordinator", "lila-peer", "prometheus"}, "update this test's rewrite"
    jobs["lila-coordinator"]["static_configs"] = [{"targets": [coordinator]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [prometheus]}]
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    (tmp_path / "targets").mkdir(exist_ok=True)
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    rules_path = tmp_path / config["rule_files"][0]
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return config_path, rules_path


class _Heartbeats:
    """Keeps a joined test peer alive (Heartbeat every second) until stopped."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, metadata: tuple) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stub, metadata), daemon=True)
        self._thread.start()

    def _run(self, stub: pb_grpc.CoordinatorStub, metadata: tuple) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            try:
                stub.Heartbeat(
                    pb.HeartbeatRequest(phase="training"), metadata=metadata, timeout=RPC_TIMEOUT_S
                )
            except grpc.RpcError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=RPC_TIMEOUT_S)


def test_real_prometheus_scrapes_coordinator_and_peer_and_fires_alert(procs, python, tmp_path):
    peer_values = _load("deploy_peer_metrics", PEER_SCRIPT)

    # A peer's metrics endpoint.
    peer_ready = tmp_path / "peer-ready.json"
    with open(tmp_path / "peer.log", "ab") as out:
        peer = procs.spawn(
            [python, str(PEER_SCRIPT), "--ready", str(peer_ready), "--timeout-s", str(PROCESS_TIMEOUT_S)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    # A coordinator serving the shipped CPU demo run.
    coordinator = start_coordinator(config=RUN_CONFIG, workdir=tmp_path, label="deploy test", python=python,
                                    spawn=procs.spawn)
    token, info = coordinator.token, coordinator.ready
    peer_address = "127.0.0.1:{}".format(
        _wait_for(
            "the peer metrics server",
            lambda: (
                peer.poll() is None and peer_ready.exists() and json.loads(peer_ready.read_text())["port"]
            ),
        )
    )

    # The peer joins (declaring its metrics address), asks for data (so it is active) and stays alive.
    channel = grpc.insecure_channel(info["grpc"])
    stub = pb_grpc.CoordinatorStub(channel)
    joined = stub.Join(
        pb.JoinRequest(
            join_token=token,
            peer_name=PEER_NAME,
            metrics_address=peer_address,
            hardware=pb.Hardware(device_type="cpu", device_name="deploy test"),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    metadata = (("authorization", f"Bearer {joined.session_token}"),)
    stub.LeaseShard(pb.LeaseShardRequest(), metadata=metadata, timeout=RPC_TIMEOUT_S)
    heartbeats = _Heartbeats(stub, metadata)
    try:
        # file_sd: the sync script writes the coordinator's target list where prometheus.yml looks.
        prom_port = free_port()
        config, _ = _test_copies(tmp_path, coordinator=info["http"], prometheus=f"127.0.0.1:{prom_port}")
        targets_file = tmp_path / "targets" / "peers.json"
        groups = _wait_for(
            "the coordinator to list the peer's metrics target",
            lambda: len(g := _sync_targets(python, info["http"], targets_file)) == 1 and g,
        )
        assert groups == [
            {
                "targets": [peer_address],
                "labels": {"job": "lila-peer", "peer_id": joined.peer_id, "peer_name": PEER_NAME},
            },
        ]

        # Prometheus from the (rewritten) shipped config.
        prometheus = start_prometheus(procs, config=config, workdir=tmp_path, port=prom_port)

        def all_up() -> dict[str, str]:
            prometheus.assert_running()
            up = {r["metric"]["job"]: r["value"][1] for r in prometheus.query("up")}
            return up if up == {"lila-coordinator": "1", "lila-peer": "1", "prometheus": "1"} else {}

        _wait_for("every scrape target to be up", all_up)
        # A query over the coordinator's metrics ...
        active = _wait_for(
            "lila_peers{state=active} == 1", lambda: prometheus.query('lila_peers{state="active"} == 1')
        )
        assert active[0]["metric"] == {
            "__name__": "lila_peers",
            "state": "active",
            "job": "lila-coordinator",
            "instance": info["http"],
        }
        assert [float(r["value"][1]) for r in prometheus.query("lila_outer_step")] == [0.0]
        # ... and over the peer's, labelled by the coordinator's service discovery.
        loss = prometheus.query("lila_peer_loss")
        assert [
            (r["metric"]["peer_name"], r["metric"]["peer_id"], r["metric"]["instance"]) for r in loss
        ] == [(PEER_NAME, joined.peer_id, peer_address)]
        assert float(loss[0]["value"][1]) == peer_values.GAUGES["loss"]
        rank = prometheus.query(f'lila_peer_layer_stable_rank{{layer="{peer_values.LAYER}"}}')
        assert [float(r["value"][1]) for r in rank] == [peer_values.STABLE_RANK]
        assert [float(r["value"][1]) for r in prometheus.query("lila_peer_tokens_total")] == [peer_values.TOKENS]
        assert _firing(prometheus, STAGED_ALERT) == []

        # Stage the alert: the only active peer leaves, so active peers drop from 1 to 0.
        heartbeats.stop()
        stub.Leave(pb.LeaveRequest(reason="deploy test"), metadata=metadata, timeout=RPC_TIMEOUT_S)
        fired = _wait_for(f"{STAGED_ALERT} to fire", lambda: _firing(prometheus, STAGED_ALERT))
        assert len(fired) == 1
        assert fired[0]["labels"] == {
            "alertname": STAGED_ALERT,
            "severity": "warning",
            "state": "active",
            "job": "lila-coordinator",
            "instance": info["http"],
        }
        assert float(fired[0]["value"]) == 0.0
        assert fired[0]["annotations"]["summary"] == "Active peers dropped to 0"
    finally:
        heartbeats.stop()
        channel.close()


REAL_PEER_WAIT_S = 240.0


def test_real_prometheus_scrapes_a_real_training_peer(procs, python, tmp_path):
    """A real `lila-peer join` (training the debug model) is found through the coordinator's targets
    list and scraped by Prometheus: its token counter and outer step are queryable."""
    import tomli_w

    from lila_net.config import load_run_config

    raw = load_run_config(RUN_CONFIG).to_dict()
    raw["diloco"].update(inner_steps=2, batch_size=2, matchmaking_time_s=0.5, averaging_timeout_s=10.0)
    run_config = tmp_path / "run.toml"
    run_config.write_text(tomli_w.dumps(raw))
    coordinator = start_coordinator(config=run_config, workdir=tmp_path, label="deploy test", python=python,
                                    spawn=procs.spawn)
    token, info = coordinator.token, coordinator.ready
    env = {**os.environ, "LILA_JOIN_TOKEN": token}
    with open(tmp_path / "peer.log", "ab") as out:
        peer = procs.spawn(
            [
                python,
                "-m",
                "peer.cli",
                "join",
                info["grpc"],
                "--name",
                PEER_NAME,
                "--workdir",
                str(tmp_path / "peer"),
                "--threads",
                "1",
                "--no-progress",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    targets_file = tmp_path / "targets" / "peers.json"
    prom_port = free_port()
    config, _ = _test_copies(tmp_path, coordinator=info["http"], prometheus=f"127.0.0.1:{prom_port}")

    def synced() -> list:
        assert peer.poll() is None, (tmp_path / "peer.log").read_text()[-3000:]
        return _sync_targets(python, info["http"], targets_file)

    groups = _wait_for(
        "the peer to register its metrics endpoint", lambda: synced(), timeout_s=REAL_PEER_WAIT_S
    )
    assert [g["labels"]["peer_name"] for g in groups] == [PEER_NAME]
    prometheus = start_prometheus(procs, config=config, workdir=tmp_path, port=prom_port)
    tokens = _wait_for(
        "Prometheus to see the peer's trained tokens",
        lambda: prometheus.query("lila_peer_tokens_total > 0"),
        timeout_s=REAL_PEER_WAIT_S,
    )
    assert [r["metric"]["peer_name"] for r in tokens] == [PEER_NAME]
    step = _wait_for(
        "an outer step on the peer",
        lambda: prometheus.query("lila_peer_outer_step >= 1"),
        timeout_s=REAL_PEER_WAIT_S,
    )
    assert step[0]["metric"]["job"] == "lila-peer"

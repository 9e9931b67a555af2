# SPDX-License-Identifier: AGPL-3.0-or-later
"""The status page in a real headless Chromium, and a real Prometheus scraping the coordinator.

Needs Debian's ``chromium`` and ``prometheus`` packages (CI installs both); each test skips, saying
so, only when its binary is absent.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_run.harness import small_run, start_coordinator, write_run_config
from tests.helpers.prometheus import needs_prometheus, start_prometheus

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RPC_TIMEOUT_S = 10.0
WAIT_S = 60.0
SNAPSHOT_WAIT_S = 1.0
LOSSES = {"alice": [5.0, 4.2, 3.6], "bob": [5.4, 4.4, 3.8]}
VAL_BPB = {2: 1.9, 3: 1.7}

STAGE = "only"
RUN = small_run(
    name="observability-test",
    stage={"name": STAGE},
    data={"docs_per_shard": 50},
    coordinator={"heartbeat_interval_s": 1.0, "lease_timeout_s": 60.0, "status_refresh_s": 0.2},
)


class _PeerMetricsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE lila_peer_alive gauge\nlila_peer_alive 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def peer_metrics_server():
    """A stand-in for a peer's /metrics endpoint (the address a peer declares at Join)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PeerMetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def running_run(procs, python, tmp_path, peer_metrics_server):
    """A coordinator with two joined peers that reported three outer steps of metrics."""
    coordinator = start_coordinator(config=write_run_config(RUN, tmp_path), workdir=tmp_path, python=python,
                                    spawn=procs.spawn)
    token, info = coordinator.token, coordinator.ready
    channel = grpc.insecure_channel(info["grpc"])
    stub = pb_grpc.CoordinatorStub(channel)
    for name, losses in LOSSES.items():
        address = peer_metrics_server if name == "alice" else ""
        hardware = pb.Hardware(device_type="cpu", device_name=f"{name}'s test CPU")
        joined = stub.Join(
            pb.JoinRequest(join_token=token, peer_name=name, hardware=hardware, metrics_address=address),
            timeout=RPC_TIMEOUT_S,
        )
        md = (("authorization", f"Bearer {joined.session_token}"),)
        lease = stub.LeaseShard(pb.LeaseShardRequest(), metadata=md, timeout=RPC_TIMEOUT_S).lease
        position = pb.ResumePosition(docs_consumed=5, tokens_consumed=1000 if name == "alice" else 600)
        stub.ReportProgress(
            pb.ReportProgressRequest(lease_id=lease.lease_id, report_seq=1, position=position),
            metadata=md,
            timeout=RPC_TIMEOUT_S,
        )
        for step, loss in enumerate(losses, start=1):
            request = pb.ReportMetricsRequest(
                outer_step=step, loss=loss, tokens_per_s=100.0 + step, val_bpb=VAL_BPB.get(step)
            )
            stub.ReportMetrics(request, metadata=md, timeout=RPC_TIMEOUT_S)
            stub.ReportOuterStep(
                pb.ReportOuterStepRequest(outer_step=step), metadata=md, timeout=RPC_TIMEOUT_S
            )
    time.sleep(SNAPSHOT_WAIT_S)
    yield info
    channel.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium")
def test_status_page_in_headless_chromium(running_run, artifacts_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    url = f"http://{running_run['http']}/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, wait_until="load", timeout=WAIT_S * 1000)
            page.wait_for_selector("#chart[data-rendered=true] svg", timeout=WAIT_S * 1000)
            names = page.locator("#peers tbody tr.peer td:first-child").all_inner_texts()
            assert sorted(names) == ["alice", "bob"]
            assert page.locator("#peers tbody tr.peer").count() == 2
            assert page.inner_text("#outer-step") == "3"
            assert page.inner_text("#global-tokens") == "1.60 K"
            assert page.inner_text("#peer-count") == "2 / 2"
            assert page.locator("circle.point-loss").count() == 3
            assert page.locator("circle.point-val_bpb").count() == 2
            path = page.get_attribute("path.series-loss", "d")
            assert path.startswith("M") and path.count("L") == 2
            leaders = page.locator("#leaderboard tbody tr td:nth-child(2)").all_inner_texts()
            assert leaders == ["alice", "bob"]
            assert STAGE in page.inner_text("#stages")
            assert errors == []
            shot = artifacts_dir / "coordinator-status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # The saved copy (what `lila up` keeps when the run ends) draws the same page from a file,
            # with no request to the coordinator: style and chart are inlined.
            saved = tmp_path / "status.html"
            with urllib.request.urlopen(f"http://{running_run['http']}/snapshot.html", timeout=WAIT_S) as r:
                saved.write_bytes(r.read())
            offline = browser.new_page(viewport={"width": 1200, "height": 1600})
            requests: list[str] = []
            offline.on("pageerror", lambda exc: errors.append(str(exc)))
            offline.on("request", lambda request: requests.append(request.url))
            offline.goto(saved.as_uri(), wait_until="load", timeout=WAIT_S * 1000)
            offline.wait_for_selector("#chart[data-rendered=true] svg", timeout=WAIT_S * 1000)
            assert offline.inner_text("#outer-step") == "3"
            assert offline.locator("circle.point-val_bpb").count() == 2
            assert offline.eval_on_selector("h1", "e => getComputedStyle(e).fontFamily") == \
                page.eval_on_selector("h1", "e => getComputedStyle(e).fontFamily")
            assert requests == [saved.as_uri()] and errors == []
        finally:
            browser.close()


@needs_prometheus
def test_real_prometheus_scrapes_peer_count(running_run, procs, tmp_path, peer_metrics_server):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: lila-coordinator\n    static_configs:\n      - targets: ['{running_run['http']}']\n"
        f"  - job_name: lila-peer\n    http_sd_configs:\n      - url: 'http://{running_run['http']}/api/prometheus-targets'\n"
        "        refresh_interval: 1s\n"
    )
    prometheus = start_prometheus(procs, config=config, workdir=tmp_path)
    deadline = time.monotonic() + WAIT_S
    peers = peer_up = None
    while time.monotonic() < deadline and (peers is None or peer_up is None):
        prometheus.assert_running()
        try:
            result = prometheus.query('lila_peers{state="active"}')
            peers = result[0]["value"][1] if result else None
            up = prometheus.query('up{job="lila-peer"}')
            peer_up = up[0] if up else None
        except OSError:
            pass
        time.sleep(0.5)
    assert peers == "2", prometheus.log.read_text()[-3000:]
    assert peer_up["metric"]["peer_name"] == "alice" and peer_up["value"][1] == "1"
    tokens = prometheus.query("lila_tokens_total")
    assert tokens[0]["value"][1] == "1600"

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The two scripts the images run besides lila-*: the container health check and the Prometheus
target sync, each against a real local HTTP server (127.0.0.1, port 0)."""

from __future__ import annotations

import http.server
import importlib.util
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.paths import REPO

HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
FETCH = REPO / "deploy" / "prometheus" / "fetch_targets.py"
RUN_TIMEOUT_S = 30
GROUPS = [
    {"targets": ["10.0.0.5:9400"], "labels": {"job": "lila-peer", "peer_id": "p-1", "peer_name": "alice"}}
]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Server:
    """A local HTTP server answering each path from ``routes`` (path -> (status, body))."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = routes.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _run(python: str, script: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(script), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, **kwargs
    )


def test_healthcheck_exit_codes(server, python):
    server.routes["/api/status"] = (200, b"{}")
    server.routes["/broken"] = (500, b"oops")
    ok = _run(python, HEALTHCHECK, f"{server.url}/api/status")
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{server.url}/api/status: HTTP 200")
    assert _run(python, HEALTHCHECK, f"{server.url}/broken").returncode == 1
    assert _run(python, HEALTHCHECK, f"{server.url}/missing").returncode == 1
    server.close()
    refused = _run(python, HEALTHCHECK, f"{server.url}/api/status", "--timeout", "2")
    assert refused.returncode == 1 and "Connection refused" in refused.stderr


def test_healthcheck_reads_the_url_from_the_environment_and_probes_wildcards_on_loopback(server, python):
    server.routes["/metrics"] = (200, b"")
    env = {"LILA_HEALTH_URL": f"http://0.0.0.0:{server.port}/metrics", "PATH": "/usr/bin:/bin"}
    assert _run(python, HEALTHCHECK, env=env).returncode == 0
    empty = _run(python, HEALTHCHECK, env={"PATH": "/usr/bin:/bin"})
    assert empty.returncode == 1 and "LILA_HEALTH_URL" in empty.stderr


def test_healthcheck_url_rewriting():
    health = _load("healthcheck", HEALTHCHECK)
    assert health.check_url("http://0.0.0.0:9400/metrics") == "http://127.0.0.1:9400/metrics"
    assert health.check_url("http://[::]:9400/metrics") == "http://[::1]:9400/metrics"
    assert health.check_url("http://peer:9400/metrics") == "http://peer:9400/metrics"
    assert health.check_url("http://0.0.0.0.example:80/") == "http://0.0.0.0.example:80/"
    with pytest.raises(ValueError, match="use http://HOST:PORT/PATH"):
        health.check_url("peer:9400")


def test_fetch_targets_writes_the_coordinators_list(server, python, tmp_path):
    server.routes["/api/prometheus-targets"] = (200, json.dumps(GROUPS).encode())
    out = tmp_path / "targets" / "peers.json"
    run = _run(python, FETCH, "--coordinator", server.url + "/", "--out", str(out), "--once")
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text()) == GROUPS
    assert "1 peer metrics target(s)" in run.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["peers.json"]


def test_fetch_targets_keeps_the_last_good_file_on_failure(server, python, tmp_path):
    out = tmp_path / "peers.json"
    out.write_text(json.dumps(GROUPS))
    server.routes["/api/prometheus-targets"] = (200, b'{"targets": "not a list"}')
    bad = _run(python, FETCH, "--coordinator", server.url, "--out", str(out), "--once")
    assert bad.returncode == 1 and "expected a JSON list of target groups" in bad.stderr
    server.close()
    down = _run(python, FETCH, "--coordinator", server.url, "--out", str(out), "--once", "--timeout", "2")
    assert down.returncode == 1 and "keeping the last file" in down.stderr
    assert json.loads(out.read_text()) == GROUPS


def test_fetch_targets_rejects_bad_options(python, tmp_path):
    run = _run(
        python, FETCH, "--coordinator", "coordinator:8080", "--out", str(tmp_path / "x.json"), "--once"
    )
    assert run.returncode == 2 and "use the HTTP base URL" in run.stderr
    run = _run(
        python, FETCH, "--coordinator", "http://x", "--out", str(tmp_path / "x.json"), "--interval", "0"
    )
    assert run.returncode == 2 and "--interval and --timeout must be > 0" in run.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "expected a JSON list"),
        ([{"labels": {}}], "group 0: expected an object with a 'targets' list"),
        ([{"targets": [""]}], "group 0: every target must be a non-empty"),
        ([{"targets": ["a:1"], "labels": {"x": 1}}], "group 0: 'labels' must map strings to strings"),
    ],
)
def test_fetch_targets_validation_names_the_problem(data, message):
    fetch = _load("fetch_targets", FETCH)
    with pytest.raises(fetch.TargetsError, match=message):
        fetch.validate_targets(data)
    assert fetch.validate_targets(GROUPS) is GROUPS

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A real Prometheus (Debian's ``prometheus`` package) for the tests that scrape a coordinator or a peer:
started by the test's process reaper on a free local port with a test's config, and queried over its
HTTP API. Tests that need it skip with :data:`needs_prometheus` when the binary is absent."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lila_run.harness import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
HTTP_TIMEOUT_S = 5.0
LOG_TAIL = 3000

needs_prometheus = pytest.mark.skipif(
    not PROMETHEUS.exists(), reason=f"{PROMETHEUS} is missing: apt-get install -y prometheus"
)


@dataclass
class Prometheus:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def assert_running(self) -> None:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-LOG_TAIL:]

    def get(self, path: str) -> Any:
        """The JSON answer of its HTTP API at ``path`` (e.g. ``/api/v1/targets``)."""
        with urllib.request.urlopen(f"{self.base}{path}", timeout=HTTP_TIMEOUT_S) as response:
            return json.load(response)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of the instant query ``expr``."""
        answer = self.get(f"/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]


def start_prometheus(procs, *, config: Path, workdir: Path, port: int | None = None) -> Prometheus:
    """Prometheus with ``config`` on 127.0.0.1:``port`` (default: a free one), its TSDB and
    ``prometheus.log`` in ``workdir``; ``procs`` (the test's process reaper) stops it."""
    port = free_port() if port is None else port
    log = workdir / "prometheus.log"
    with open(log, "ab") as out:
        proc = procs.spawn(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Prometheus(proc, port, log)

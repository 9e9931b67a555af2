# SPDX-License-Identifier: AGPL-3.0-or-later
"""Start a ``lila-coordinator serve`` subprocess and wait until it serves (tests, benchmarks, demos)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_READY_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.1


def serve_command(
    *,
    config: str | Path,
    db: str | Path,
    ready_file: str | Path,
    grpc: str = "127.0.0.1:0",
    http: str = "127.0.0.1:0",
    dht: bool = False,
    extra: Sequence[str] = (),
    python: str = sys.executable,
    log_level: str = "INFO",
) -> list[str]:
    """The argv of a coordinator on free local ports that writes ``ready_file`` once serving."""
    argv = [
        python,
        "-m",
        "coordinator.cli",
        "--log-level",
        log_level,
        "serve",
        "--config",
        str(config),
        "--db",
        str(db),
        "--grpc",
        grpc,
        "--http",
        http,
        "--ready-file",
        str(ready_file),
    ]
    if not dht:
        argv.append("--no-dht")
    return [*argv, *extra]


def wait_for_ready(
    proc: subprocess.Popen,
    ready_file: str | Path,
    *,
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    log: str | Path | None = None,
) -> dict[str, Any]:
    """The ready file's JSON once it appears; raises ``RuntimeError`` (with the log's tail) if the
    process exits first or ``timeout_s`` passes."""
    ready_file = Path(ready_file)
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        tail = Path(log).read_text(errors="replace")[-3000:] if log and Path(log).exists() else ""
        if proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited with code {proc.returncode} before serving:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the coordinator did not serve within {timeout_s:g} s:\n{tail}")
        time.sleep(POLL_INTERVAL_S)
    return json.loads(ready_file.read_text())

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The namespace testbed in tests: skip (or, with ``LILA_REQUIRE_TESTBED=1``, fail) where it cannot run,
a ``testbed`` fixture, and helpers to run :mod:`tests.helpers.netprobe` inside its hosts.

CI runs as root and exports ``LILA_REQUIRE_TESTBED=1`` (``.ci/run``), so a missing package or a broken
kernel feature fails the suite there instead of silently skipping the network tests.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from lila_run.testbed import Host, Testbed, available
from tests.helpers.paths import REPO

NETPROBE = REPO / "tests" / "helpers" / "netprobe.py"
REQUIRE_ENV = "LILA_REQUIRE_TESTBED"


def require_testbed() -> None:
    """Skip the calling test when namespaces cannot be made here; fail instead under LILA_REQUIRE_TESTBED=1."""
    reason = available()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the namespace testbed is unavailable: {reason}")
    pytest.skip(f"namespace testbed unavailable: {reason}")


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    """A fresh :class:`Testbed`, closed (processes killed, namespaces deleted) after the test."""
    require_testbed()
    with Testbed() as bed:
        yield bed


def netprobe(*args: Any) -> list[str]:
    """argv of the netprobe tool (run it inside a host with ``testbed.popen``/``testbed.run``)."""
    return [sys.executable, str(NETPROBE), *map(str, args)]


def read_line(proc: subprocess.Popen, *, timeout_s: float) -> str:
    """The first line ``proc`` prints on its (text, piped) stdout, stripped; "" if none in ``timeout_s``.
    Call it before anything else reads that pipe (select cannot see Python's read buffer)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else ""


def start_server(bed: Testbed, host: Host, port: int, *extra: Any, timeout_s: float = 20.0
                 ) -> subprocess.Popen:
    """A netprobe server on ``host``; returns once it listens."""
    proc = bed.popen(host, netprobe("serve", "--port", port, "--timeout", timeout_s, *extra),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = read_line(proc, timeout_s=10.0)
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"netprobe server on {host.name}:{port} did not start: {line!r} {err}")
    return proc


def server_result(proc: subprocess.Popen, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """The JSON line a netprobe server prints after its one connection."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"netprobe server failed ({proc.returncode}): {err}"
    return json.loads(out.strip().splitlines()[-1])


def try_connect(bed: Testbed, host: Host, address: str, port: int, *, timeout_s: float
                ) -> subprocess.CompletedProcess:
    """A connection attempt from ``host``; returncode 0 when it connected, else 1 and the error."""
    return bed.run(host, netprobe("connect", "--host", address, "--port", port, "--timeout", timeout_s),
                   timeout=timeout_s + 10, capture_output=True, text=True)

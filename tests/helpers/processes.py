# SPDX-License-Identifier: AGPL-3.0-or-later
"""Processes a test starts: each in its own process group, killed (whole group) when the test ends, so
hivemind's p2pd and averager children die with their parent. Only processes this test session started
are ever killed."""

from __future__ import annotations

import os
import signal
import subprocess

from lila_run.harness import signal_group
from tests.helpers.paths import REPO

TERMINATE_GRACE_S = 5.0


class ProcessReaper:
    """Tracks process groups started by a test and kills them all when it ends."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], **kwargs) -> subprocess.Popen:
        """Start ``args`` in a new process group, with the repo on PYTHONPATH, and track it."""
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        kwargs["env"] = env
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, **kwargs)
        self._procs.append(proc)
        return proc

    def track(self, proc: subprocess.Popen) -> subprocess.Popen:
        self._procs.append(proc)
        return proc

    def reap(self) -> None:
        for proc in self._procs:
            signal_group(proc, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()


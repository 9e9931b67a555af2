# SPDX-License-Identifier: AGPL-3.0-or-later
"""Shared fixtures: a process reaper, paths to bundled data, and quiet torch threads.

Every test that starts processes must start them in their own process group (``start_new_session=True``)
through :func:`spawn` or register them with :func:`reap`; at the end of each test, and again at the end of
the session, whatever is still alive is killed by process group, so hivemind's p2pd and averager children
die with their parent. Only processes this test session started are ever killed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers.paths import REPO
from tests.helpers.processes import TERMINATE_GRACE_S, ProcessReaper
from tests.helpers.testbed import testbed  # noqa: F401  (the namespace testbed fixture)


@pytest.fixture
def procs() -> Iterator[ProcessReaper]:
    """Start subprocesses with ``procs.spawn([...])``; they are killed (whole group) after the test."""
    reaper = ProcessReaper()
    try:
        yield reaper
    finally:
        reaper.reap()


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path | None:
    """``../shared/data`` beside the repo when it exists (benchmarks' larger data), else None."""
    path = REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave artifacts a person may want to look at (screenshots, plots)."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    """Tests share two cores with each other's subprocesses: keep torch at one intra-op thread."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last line of defence: kill any descendant of this pytest process that is still alive."""
    me = psutil.Process()
    # torch_shm_manager serves shared-memory tensors still referenced in this process (hivemind's
    # futures); killing it makes a later garbage collection abort the interpreter.
    children = [c for c in me.children(recursive=True) if _name(c) != "torch_shm_manager"]
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=TERMINATE_GRACE_S)

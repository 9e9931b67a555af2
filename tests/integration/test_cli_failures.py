# SPDX-License-Identifier: AGPL-3.0-or-later
"""The three commands' expected failures, run as a user runs them (subprocesses): each ends with its
documented exit status (:class:`lila_net.exits.ExitStatus`) and one line on stderr that names the problem
(after the log lines of a command that logs), never a traceback unless ``-v`` asks for one."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lila_net.exits import ExitStatus
from lila_run.harness import LocalCoordinator, free_port
from tests.helpers.paths import REPO

COMMAND_TIMEOUT_S = 60.0
RETRY_SEEN_TIMEOUT_S = 30.0  # until `lila-peer join` logs its first retry of an unreachable coordinator
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|[EWID]\d{4} \d\d:\d\d:\d\d)")  # Python logging, gRPC C logging
DEMO = REPO / "runs" / "cpu-demo.toml"


def run(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` to its end (killed after COMMAND_TIMEOUT_S)."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, cwd=cwd or REPO)


def problem_line(stderr: str) -> str:
    """The one line of ``stderr`` that is not a log line; fails unless there is exactly one and it comes last
    (no traceback, no second message)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    messages = [line for line in lines if not LOG_LINE.match(line)]
    assert "Traceback" not in stderr, stderr
    assert len(messages) == 1 and lines[-1] == messages[0], stderr
    return messages[0]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCoordinator]:
    """A coordinator of the CPU demo run on 127.0.0.1 (free ports, no DHT), with one valid join token."""
    local = LocalCoordinator(config=DEMO, workdir=tmp_path_factory.mktemp("coordinator"))
    local.create_token()
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from lila_model.checkpoint import save_checkpoint
    from lila_model.config import get_preset
    from lila_model.model import LilaLM

    torch.manual_seed(0)
    model = LilaLM(get_preset("debug", vocab_size=2048, block_size=64))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", model, extra={"tokenizer": "fineweb-edu-2048"})


# ---------------------------------------------------------------------------------------------- lila-peer
def test_join_with_a_refused_token_says_so_in_one_line(coordinator: LocalCoordinator, tmp_path: Path) -> None:
    done = run("peer.cli", "join", coordinator.ready["grpc"], "--token", "lila_jt_not-a-real-one",
               "--workdir", str(tmp_path))
    assert done.returncode == ExitStatus.REFUSED == 6
    line = problem_line(done.stderr)
    assert line.startswith(f"lila-peer join: error: the coordinator at {coordinator.ready['grpc']} refused the "
                           "join token: join_token is not known to this run: ask the run's organizer"), line
    assert "could not say goodbye" not in done.stderr  # a peer that never joined has nothing to leave


def test_join_with_verbose_shows_the_traceback_above_the_line(coordinator: LocalCoordinator, tmp_path: Path) -> None:
    done = run("peer.cli", "-v", "join", coordinator.ready["grpc"], "--token", "WRONG", "--workdir", str(tmp_path))
    assert done.returncode == ExitStatus.REFUSED
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("lila-peer join: error: the coordinator at")


@pytest.mark.parametrize(("address", "message"), [
    ("no-port-here", "coordinator address 'no-port-here': use HOST:PORT"),
    ("127.0.0.1:0", "coordinator address '127.0.0.1:0': use HOST:PORT"),
])
def test_join_with_a_bad_address_is_refused_before_dialing(address: str, message: str, tmp_path: Path) -> None:
    done = run("peer.cli", "join", address, "--token", "t", "--workdir", str(tmp_path))
    assert done.returncode == ExitStatus.BAD_INPUT == 2
    assert problem_line(done.stderr) == f"lila-peer join: error: {message}, e.g. coordinator.example.org:7600 " \
                                        "(the address the run's organizer gave you)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_join_stopped_while_the_coordinator_is_unreachable_exits_cleanly(sig: signal.Signals, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "peer.cli", "join", address, "--token", "lila_jt_x",
                                 "--workdir", str(tmp_path / "w")], stdout=subprocess.DEVNULL, stderr=stderr,
                                text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + RETRY_SEEN_TIMEOUT_S
        while "retrying in" not in err.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert "retrying in" in err.read_text(), err.read_text()
        proc.send_signal(sig)
        code = proc.wait(timeout=COMMAND_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=COMMAND_TIMEOUT_S)
    assert code == ExitStatus.OK  # a stop asked for is a clean leave, before joining too
    assert problem_line(err.read_text()) == (f"lila-peer join: stopped before the coordinator at {address} "
                                             "answered; nothing was running yet")


def test_plan_with_a_missing_config(tmp_path: Path) -> None:
    done = run("peer.cli", "plan", "--config", str(tmp_path / "nope.toml"))
    assert done.returncode == ExitStatus.BAD_INPUT
    assert problem_line(done.stderr) == (f"lila-peer plan: error: run config {tmp_path / 'nope.toml'} does not "
                                         "exist; see runs/ for examples")


# ---------------------------------------------------------------------------------------------- lila-coordinator
def test_coordinator_with_a_bad_config_and_address(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nname = "x"\n')
    done = run("coordinator.cli", "serve", "--config", str(bad), "--db", str(tmp_path / "c.db"))
    assert done.returncode == ExitStatus.BAD_INPUT
    assert problem_line(done.stderr) == f"lila-coordinator: error: {bad}: missing section [curriculum]"
    done = run("coordinator.cli", "serve", "--config", str(DEMO), "--db", str(tmp_path / "c.db"), "--grpc", "nowhere")
    assert done.returncode == ExitStatus.BAD_INPUT
    assert problem_line(done.stderr) == ("lila-coordinator: error: --grpc 'nowhere': use HOST:PORT, e.g. 127.0.0.1:0 "
                                         "(port 0 picks a free port)")
    verbose = run("coordinator.cli", "-v", "serve", "--config", str(bad), "--db", str(tmp_path / "c.db"))
    assert verbose.returncode == ExitStatus.BAD_INPUT and "Traceback (most recent call last)" in verbose.stderr


def test_coordinator_on_a_port_in_use(coordinator: LocalCoordinator, tmp_path: Path) -> None:
    done = run("coordinator.cli", "serve", "--config", str(DEMO), "--db", str(tmp_path / "c.db"), "--no-dht",
               "--grpc", coordinator.ready["grpc"], "--http", "127.0.0.1:0")
    assert done.returncode == ExitStatus.SYSTEM == 8
    line = problem_line(done.stderr)
    assert line.startswith(f"lila-coordinator: error: cannot serve gRPC on {coordinator.ready['grpc']}: the port "
                           "is in use"), line


def test_coordinator_token_commands(tmp_path: Path) -> None:
    done = run("coordinator.cli", "token", "create", "--db", str(tmp_path / "missing-dir" / "c.db"))
    assert done.returncode == ExitStatus.BAD_INPUT
    assert problem_line(done.stderr) == (f"lila-coordinator: error: database directory {tmp_path / 'missing-dir'} "
                                         "does not exist: create it or pass another --db path")
    done = run("coordinator.cli", "token", "revoke", "--db", str(tmp_path / "c.db"), "nope")
    assert done.returncode == ExitStatus.NO == 1
    assert problem_line(done.stderr) == ("lila-coordinator: error: no active join token with id 'nope'; see "
                                         "`lila-coordinator token list`")


# ---------------------------------------------------------------------------------------------- lila
def test_lila_missing_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for args, message in [
        (("eval", "--checkpoint", str(missing)), f"lila eval: error: checkpoint {missing} does not exist"),
        (("generate", "--checkpoint", str(missing), "--prompt", "hi"), f"lila generate: error: {missing} does not exist"),
        (("up", "--config", str(missing)), f"lila up: error: run config {missing} does not exist"),
    ]:
        done = run("lila_run.cli", *args)
        assert done.returncode == ExitStatus.BAD_INPUT, done.stderr
        assert problem_line(done.stderr).startswith(message), done.stderr


def test_lila_eval_on_a_full_disk(checkpoint: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here to stand in for a full disk")
    done = run("lila_run.cli", "eval", "--checkpoint", str(checkpoint), "--max-docs", "1", "--out", "/dev/full")
    assert done.returncode == ExitStatus.SYSTEM
    assert problem_line(done.stderr) == ("lila eval: error: no space left on the device: free some space, or point "
                                         "the command at another disk")
    assert "scored the first 1 documents" in done.stdout  # what it did before the write failed

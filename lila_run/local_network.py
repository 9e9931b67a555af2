# SPDX-License-Identifier: AGPL-3.0-or-later
"""A whole LILA network on one machine: a coordinator and N peers as separate processes on 127.0.0.1.

Every process runs in its own process group, so stopping one also stops its hivemind children (p2pd).
:meth:`LocalNetwork.stop` asks the peers to leave (SIGINT: they release their leases at the exact resume
positions and say goodbye), waits, then stops the coordinator; anything still alive after the grace
period is killed. The newest peer checkpoint is copied to ``WORKDIR/checkpoint`` — a regular LILA
checkpoint for ``lila eval`` and ``lila generate``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lila_run.harness import LocalCoordinator, new_join_token, signal_group

logger = logging.getLogger(__name__)

PEER_LEAVE_GRACE_S = 20.0
COORDINATOR_STOP_GRACE_S = 10.0
STATUS_TIMEOUT_S = 2.0
CHECKPOINT_FILES = ("model.safetensors", "config.json", "extra.json")


@dataclass(frozen=True, kw_only=True)
class NetworkOptions:
    """What ``lila up`` starts. ``threads_per_peer`` defaults to the cores divided among the peers."""

    config: Path
    workdir: Path
    peers: int = 2
    max_outer_steps: int | None = None
    threads_per_peer: int | None = None
    dht: bool = True
    # The coordinator's DHT admits only peers that present coordinator-signed averaging credentials
    # (IssueCredential); False runs it open, for peers too old to present them.
    dht_auth: bool = True
    extra_peer_args: tuple[str, ...] = ()


@dataclass
class LocalNetwork:
    options: NetworkOptions
    python: str = sys.executable
    coordinator: subprocess.Popen | None = None
    peers: list[subprocess.Popen] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)
    token: str = ""
    peer_tokens: dict[int, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ start
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _log(self, name: str):
        return open(self.options.workdir / f"{name}.log", "ab")

    def start_coordinator(self) -> dict[str, Any]:
        """Create a join token (:attr:`token`) and start the coordinator (``WORKDIR/coordinator.db``, its
        ready file and ``coordinator.log``); returns its ready file once it serves."""
        extra = () if self.options.dht_auth or not self.options.dht else ("--no-dht-auth",)
        coordinator = LocalCoordinator(config=self.options.config, workdir=self.options.workdir,
                                       dht=self.options.dht, extra=extra, python=self.python, env=self._env())
        self.token = coordinator.create_token(label="lila-up")
        try:
            self.ready = coordinator.start()
        finally:
            self.coordinator = coordinator.proc
        return self.ready

    def peer_token(self, index: int) -> str:
        """Peer ``index``'s own join token (made on first use, kept for its restarts): the coordinator
        counts quorums and strike witnesses per join token and bounds the sessions of each, so every
        peer of a network needs its own, as every volunteer machine does."""
        if index not in self.peer_tokens:
            self.peer_tokens[index] = new_join_token(self.options.workdir / "coordinator.db", label=f"peer-{index}")
        return self.peer_tokens[index]

    def peer_workdir(self, index: int) -> Path:
        """Where peer ``index`` keeps its checkpoints and ``outer-steps.jsonl``."""
        return self.options.workdir / f"peer-{index}"

    def peer_command(self, index: int, extra_args: Sequence[str] = ()) -> list[str]:
        threads = self.options.threads_per_peer or max(1, (os.cpu_count() or 1) // self.options.peers)
        argv = [self.python, "-m", "peer.cli", "join", self.ready["grpc"], "--name", f"peer-{index}",
                "--workdir", str(self.peer_workdir(index)), "--threads", str(threads),
                "--metrics-port", "0"]
        if self.options.max_outer_steps is not None:
            argv += ["--max-outer-steps", str(self.options.max_outer_steps)]
        return [*argv, *self.options.extra_peer_args, *extra_args]

    def start_peer(self, index: int | None = None, *, extra_args: Sequence[str] = ()) -> subprocess.Popen:
        """Start peer ``index`` (default: the next one) in its own process group; ``extra_args`` go to
        ``lila-peer join`` after the network's own (a later ``--max-outer-steps`` wins)."""
        index = len(self.peers) if index is None else index
        env = self._env()
        env["LILA_JOIN_TOKEN"] = self.peer_token(index)  # not on the command line, where `ps` would show it
        with self._log(f"peer-{index}") as log:
            proc = subprocess.Popen(self.peer_command(index, extra_args), stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self.peers.append(proc)
        return proc

    def signal_peer(self, index: int, sig: int) -> None:
        """Send ``sig`` to peer ``index``'s whole process group (as Ctrl+C in its terminal would)."""
        signal_group(self.peers[index], sig)

    def start(self) -> None:
        self.start_coordinator()
        for index in range(self.options.peers):
            self.start_peer(index)

    # ------------------------------------------------------------------ watch
    def fetch(self, path: str) -> bytes | None:
        """GET ``path`` (e.g. ``/api/status``) from the coordinator's HTTP side; None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.ready['http']}{path}", timeout=STATUS_TIMEOUT_S) as r:
                return r.read()
        except (OSError, KeyError):
            return None

    def status(self) -> dict[str, Any] | None:
        """The coordinator's cached status snapshot, or None when it does not answer."""
        body = self.fetch("/api/status")
        try:
            return None if body is None else json.loads(body)
        except ValueError:
            return None

    def save_status_page(self, target: Path) -> Path | None:
        """Save the coordinator's self-contained status page (``/snapshot.html``) to ``target``; None when
        the coordinator does not answer."""
        body = self.fetch("/snapshot.html")
        if body is None:
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        return target

    def peers_running(self) -> int:
        return sum(1 for p in self.peers if p.poll() is None)

    def wait_peers(self, timeout_s: float | None = None) -> list[int | None]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for proc in self.peers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                pass
        return [p.poll() for p in self.peers]

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        for proc in self.peers:
            signal_group(proc, signal.SIGINT)
        self.wait_peers(PEER_LEAVE_GRACE_S)
        for proc in self.peers:
            signal_group(proc, signal.SIGKILL)
        if self.coordinator is not None:
            signal_group(self.coordinator, signal.SIGTERM)
            try:
                self.coordinator.wait(timeout=COORDINATOR_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            signal_group(self.coordinator, signal.SIGKILL)
        for proc in [*self.peers, *([self.coordinator] if self.coordinator else [])]:
            try:
                proc.wait(timeout=COORDINATOR_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("process %d did not exit", proc.pid)

    def collect_checkpoint(self) -> Path | None:
        """Copy the newest verified peer checkpoint to ``WORKDIR/checkpoint``; None when there is none."""
        from peer.checkpoints import CheckpointStore

        best: tuple[int, Path] | None = None
        for index in range(len(self.peers)):
            path = CheckpointStore(self.peer_workdir(index) / "checkpoints").latest_path()
            if path is not None:
                step = int(path.name.split("-")[-1])
                if best is None or step > best[0]:
                    best = (step, path)
        if best is None:
            return None
        target = self.options.workdir / "checkpoint"
        tmp = self.options.workdir / ".checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            if (best[1] / name).exists():
                shutil.copy2(best[1] / name, tmp / name)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return target

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A peer whose device cannot hold the run's model: it joins, says why, leaves, and exits 3 — nothing
else starts (no DHT, no training) and the coordinator sees it leave."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import peer.setup
from coordinator.settings import ServerSettings
from coordinator.state import PeerState
from coordinator.storage import Storage
from lila_run.harness import small_run
from peer.errors import EXIT_DOES_NOT_FIT
from peer.events import EVENTS_FILE, read_events
from peer.hardware import detect_hardware
from peer.node import PeerNode
from peer.options import PeerOptions
from tests.helpers.coordinator_service import in_process_service

GIB = 1 << 30


def test_a_peer_whose_device_is_too_small_leaves_with_exit_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    small_machine = replace(detect_hardware("cpu"), memory_bytes=GIB // 4, host_memory_bytes=GIB // 4)
    monkeypatch.setattr(peer.setup, "detect_hardware", lambda device: small_machine)  # not what is tested
    run = small_run(name="too-big", model={"preset": "lila-1b"})
    built = in_process_service(Storage(tmp_path / "run.db"), ServerSettings.from_run_config(run), run="too-big",
                               description=run.to_toml())

    async def scenario() -> tuple[int, object]:
        async with built.serving() as address:
            options = PeerOptions(coordinator=address, token=built.token, workdir=tmp_path / "peer",
                                  metrics_port=None, progress=False)
            node = PeerNode(options, stop=threading.Event())
            code = await asyncio.to_thread(node.run)
            return code, built.engine.state
    with caplog.at_level("ERROR", logger="peer.node"):
        code, state = asyncio.run(scenario())

    assert code == EXIT_DOES_NOT_FIT
    assert "lila-1b does NOT fit in 0.2 GiB" in caplog.text  # the planner's message, with the fix
    [peer_record] = state.peers.values()
    assert peer_record.state is PeerState.LEFT
    [leave] = read_events(tmp_path / "peer" / EVENTS_FILE, "leave")
    assert (leave["reason"], leave["released"], leave["outer_step"], leave["peer_id"]) == (
        "done", [], 0, peer_record.peer_id)

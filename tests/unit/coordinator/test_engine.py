# SPDX-License-Identifier: AGPL-3.0-or-later
"""The engine's group commit and failure handling, and the service's deadline and error paths
(in-process gRPC server on 127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from coordinator import actions as act
from coordinator import events as ev
from coordinator.engine import Engine, StorageUnavailable
from coordinator.plan import synthetic_plan
from coordinator.settings import ServerSettings
from coordinator.storage import Storage
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from tests.helpers.coordinator_service import core_config, in_process_service

PLAN = synthetic_plan([[2, 2, 2]])
PEERS = 50


class FlakyStorage(Storage):
    """Storage whose next ``fail`` commits raise."""

    fail = 0

    def commit(self, *args, **kwargs):
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        return super().commit(*args, **kwargs)


def test_concurrent_events_share_commits_and_are_durable(tmp_path):
    async def scenario():
        engine = Engine(storage=Storage(tmp_path / "run.db"), plan=PLAN, config=core_config())
        await engine.start()
        commits_before = engine.commits
        results = await asyncio.gather(
            *(engine.submit(ev.PeerJoined(f"p{i}", f"n{i}")) for i in range(PEERS))
        )
        assert all(any(isinstance(a, act.PeerAdmitted) for a in r) for r in results)
        batched = engine.commits - commits_before
        await engine.stop()
        engine.storage.close()
        return batched

    batched = asyncio.run(scenario())
    assert 1 <= batched < PEERS
    restored = Storage(tmp_path / "run.db").load(PLAN, core_config())
    assert sorted(restored.peers) == sorted(f"p{i}" for i in range(PEERS))


def test_failed_commit_refuses_the_batch_and_keeps_serving(tmp_path):
    async def scenario():
        storage = FlakyStorage(tmp_path / "run.db")
        engine = Engine(storage=storage, plan=PLAN, config=core_config())
        await engine.start()
        storage.fail = 1
        with pytest.raises(StorageUnavailable, match="disk full"):
            await engine.submit(ev.PeerJoined("p1", "a"))
        assert "p1" not in engine.state.peers
        with pytest.raises(TypeError, match="expected one of the events"):
            await engine.submit(object())  # a core failure affects only its own caller
        await engine.submit(ev.PeerJoined("p2", "b"))
        await engine.stop()
        storage.close()
        return engine.state

    state = asyncio.run(scenario())
    assert sorted(state.peers) == ["p2"]
    assert sorted(Storage(tmp_path / "run.db").load(PLAN, core_config()).peers) == ["p2"]


class StuckEngine:
    """An engine whose submits never finish (a stuck database) or raise a bug."""

    def __init__(self, storage, mode: str) -> None:
        self.storage = storage
        self.mode = mode
        self.state = storage.load(PLAN, core_config())

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def submit(self, event):
        if self.mode == "bug":
            raise KeyError("bug")
        await asyncio.sleep(3600)


@pytest.mark.parametrize(
    ("mode", "code", "text"),
    [
        ("stuck", grpc.StatusCode.DEADLINE_EXCEEDED, "took longer than 0.3 s inside the coordinator"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error in the coordinator"),
    ],
)
def test_handler_deadline_and_internal_errors(tmp_path, mode, code, text):
    async def scenario():
        storage = Storage(tmp_path / "run.db")
        built = in_process_service(storage, ServerSettings.of(handler_timeout_s=0.3), run="r",
                                   engine=StuckEngine(storage, mode))
        async with built.serving() as address, grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            outcomes = []
            for _ in range(2):  # the server answers again after the failure
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Join(pb.JoinRequest(join_token=built.token, peer_name="x"), timeout=10)
                outcomes.append((info.value.code(), info.value.details()))
            return outcomes, built.service.metrics.render().decode()

    outcomes, metrics = asyncio.run(scenario())
    for got_code, details in outcomes:
        assert got_code == code and text in details
    assert f'lila_rpc_requests_total{{code="{code.name}",method="Join"}} 2.0' in metrics

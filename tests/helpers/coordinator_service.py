# SPDX-License-Identifier: AGPL-3.0-or-later
"""A real coordinator service (engine, SQLite ledger, gRPC handlers) built in the test process, for tests
that call its RPCs directly: one join token, a status board, a credential authority with a fixed key
(:data:`AUTHORITY_SEED`), served on a free local port by :meth:`InProcessService.serving`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from coordinator.auth import SessionSigner, create_join_token
from coordinator.engine import Engine
from coordinator.metrics import CoordinatorMetrics
from coordinator.plan import synthetic_plan
from coordinator.server import CoordinatorService, RunDescription, start_grpc_server
from coordinator.settings import ServerSettings
from coordinator.state import CoreConfig
from coordinator.status import RunInfo, StatusBoard
from coordinator.storage import Storage
from lila_net.credentials import CredentialAuthority

SESSION_TTL_S = 3600.0
AUTHORITY_SEED = bytes(32)


@dataclass
class InProcessService:
    storage: Storage
    engine: Any  # an Engine, or a test's stand-in with the same start/stop/submit/state
    token: str
    service: CoordinatorService

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Start the engine and a gRPC server of the service on 127.0.0.1 (a free port) and yield its address;
        on exit stop both and close the storage."""
        await self.engine.start()
        try:
            server, port = await start_grpc_server(self.service, host="127.0.0.1", port=0)
            try:
                yield f"127.0.0.1:{port}"
            finally:
                await server.stop(None)
        finally:
            await self.engine.stop()
            self.storage.close()


def in_process_service(storage: Storage, settings: ServerSettings, *, run: str, description: str = "",
                       engine: Any = None) -> InProcessService:
    """The service over ``storage`` with a 3-shard synthetic plan, or over ``engine`` when given (a stand-in
    that fails on purpose); start ``engine`` before serving (:meth:`InProcessService.serving` does)."""
    if engine is None:
        engine = Engine(storage=storage, plan=synthetic_plan([[4, 4, 4]]), config=settings.core_config())
    _, token = create_join_token(storage, label=run, now=time.time())
    board = StatusBoard(state=lambda: engine.state, history=lambda n: [], run=RunInfo(run, "debug"), refresh_s=1.0,
                        history_limit=1)
    service = CoordinatorService(
        engine=engine,
        signer=SessionSigner(storage.secret(), ttl_s=SESSION_TTL_S),
        settings=settings,
        description=RunDescription(description),
        metrics=CoordinatorMetrics(),
        status=board,
        authority=CredentialAuthority(AUTHORITY_SEED, run=run),
    )
    return InProcessService(storage, engine, token, service)


def core_config(**overrides) -> CoreConfig:
    """The scheduler's config from the default run sections, with ``overrides`` applied to it directly
    (pure-core tests may use values a run config would refuse, e.g. a lease timeout of 1 s)."""
    return dataclasses.replace(ServerSettings().core_config(), **overrides)

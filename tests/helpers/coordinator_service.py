# SPDX-License-Identifier: AGPL-3.0-or-later
"""A real coordinator service (engine, SQLite ledger, gRPC handlers) built in the test process, for tests
that call its RPCs directly: one join token, a status board, a credential authority with a fixed key."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from coordinator.auth import SessionSigner, create_join_token
from coordinator.engine import Engine
from coordinator.metrics import CoordinatorMetrics
from coordinator.plan import synthetic_plan
from coordinator.server import CoordinatorService, RunDescription
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
    engine: Engine
    token: str
    service: CoordinatorService


def in_process_service(storage: Storage, settings: ServerSettings, *, run: str,
                       description: str = "") -> InProcessService:
    """The service over ``storage`` with a 3-shard synthetic plan; start ``engine`` before serving."""
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

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Assembles a whole coordinator (storage, engine, DHT node, gRPC server, status page) in one
process, and takes it down again. Used by the CLI and by in-process tests."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from coordinator.auth import SessionSigner
from coordinator.engine import Engine
from coordinator.metrics import CoordinatorMetrics
from coordinator.plan import RunPlan
from coordinator.server import STOP_GRACE_S, CoordinatorService, RunDescription, start_grpc_server
from coordinator.settings import ServerSettings
from coordinator.status import RunInfo, StatusBoard
from coordinator.storage import Storage
from coordinator.web import StatusWeb
from lila_net.credentials import CredentialAuthority
from lila_net.dht.node import DhtNode, start_dht
from lila_net.tls import ServerTls

logger = logging.getLogger(__name__)

LOOP_LAG_PROBE_S = 0.05
AUTHORITY_SECRET_NAME = "averaging_ed25519"


@dataclass
class Addresses:
    """Where a started coordinator listens."""

    grpc: str
    http: str
    dht_maddrs: list[str] = field(default_factory=list)
    dht_start_s: float | None = None
    dht_import_s: float | None = None


@dataclass(frozen=True)
class DhtOptions:
    """Whether and where to run the DHT bootstrap node (``host`` None: the gRPC host; ``announce``: the
    public address or name peers dial, see :func:`lila_net.dht.node.start_dht`)."""

    enabled: bool = True
    host: str | None = None
    port: int = 0
    announce: str | None = None
    identity_path: str | None = None


class CoordinatorApp:
    """One coordinator. ``await start(...)``, then ``await stop()``."""

    def __init__(
        self,
        *,
        plan: RunPlan,
        run: RunInfo,
        run_config_toml: str,
        settings: ServerSettings,
        db_path: str | Path,
        dht: DhtOptions | None = None,
    ) -> None:
        self.plan = plan
        self.run = run
        self.run_config_toml = run_config_toml
        self.settings = settings
        self.db_path = db_path
        self.dht_options = dht or DhtOptions(enabled=False)
        self.storage: Storage | None = None
        self.engine: Engine | None = None
        self.service: CoordinatorService | None = None
        self.metrics = CoordinatorMetrics()
        self.dht: DhtNode | None = None
        self.authority: CredentialAuthority | None = None
        self._grpc: grpc.aio.Server | None = None
        self._web: StatusWeb | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._history_storage: Storage | None = None

    async def start(self, *, grpc_host: str, grpc_port: int, http_host: str, http_port: int,
                    tls: ServerTls | None = None) -> Addresses:
        """Open the database, start the DHT node (first: it forks), the engine, gRPC (over TLS with ``tls``)
        and HTTP."""
        self.storage = Storage(self.db_path, metrics_rows_per_peer=self.settings.coordinator.metrics_rows_per_peer)
        self.authority = CredentialAuthority(
            self.storage.secret(AUTHORITY_SECRET_NAME), run=self.run.name, ttl_s=self.settings.trust.credential_ttl_s
        )
        addresses = Addresses(grpc="", http="")
        if self.dht_options.enabled:
            self.dht = start_dht(
                host=self.dht_options.host or grpc_host,
                port=self.dht_options.port,
                announce=self.dht_options.announce,
                identity_path=self.dht_options.identity_path,
                authority=self.authority if self.settings.coordinator.dht_auth else None,
            )
            addresses.dht_maddrs, addresses.dht_start_s = self.dht.maddrs, self.dht.start_seconds
            addresses.dht_import_s = self.dht.import_seconds
        self.engine = Engine(
            storage=self.storage,
            plan=self.plan,
            config=self.settings.core_config(),
            max_batch=self.settings.coordinator.max_batch,
            tick_interval_s=self.settings.coordinator.tick_interval_s,
        )
        await self.engine.start()
        engine = self.engine
        self._history_storage = history = Storage(self.db_path)  # the status thread's own connection
        board = StatusBoard(
            state=lambda: engine.state,
            history=lambda limit: history.metrics_history(limit=limit),
            run=self.run,
            refresh_s=self.settings.coordinator.status_refresh_s,
            history_limit=self.settings.coordinator.history_limit,
        )
        board.listeners.append(self.metrics.set_snapshot)
        self._web = StatusWeb(board=board, metrics=self.metrics)
        board.refresh()
        self.service = CoordinatorService(
            engine=self.engine,
            signer=SessionSigner(self.storage.secret(), ttl_s=self.settings.coordinator.session_ttl_s),
            settings=self.settings,
            description=RunDescription(self.run_config_toml, tuple(addresses.dht_maddrs)),
            metrics=self.metrics,
            status=board,
            authority=self.authority,
        )
        self.service.revoked_token_ids = self.storage.revoked_token_ids()
        try:
            self._grpc, port = await start_grpc_server(self.service, host=grpc_host, port=grpc_port, tls=tls)
        except RuntimeError as exc:  # gRPC says only "Failed to bind to address ..."
            if "bind" not in str(exc).lower():
                raise
            raise OSError(errno.EADDRINUSE, f"cannot serve gRPC on {grpc_host}:{grpc_port}: the port is in use or "
                          "the address is not this machine's; choose another --grpc (port 0 picks a free "
                          "one)") from exc
        addresses.grpc = f"{grpc_host}:{port}"
        http = await self._web.start(host=http_host, port=http_port)
        addresses.http = f"{http_host}:{http}"
        self._tasks = [
            asyncio.create_task(board.run(), name="status-board"),
            asyncio.create_task(self._refresh_revocations(), name="token-revocations"),
            asyncio.create_task(self._watch_loop_lag(), name="loop-lag"),
        ]
        return addresses

    async def _watch_loop_lag(self) -> None:
        """Record how late a short timer fires: the delay every RPC sees before its handler runs
        (CPU starvation, long synchronous work, garbage collection)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_LAG_PROBE_S
            await asyncio.sleep(LOOP_LAG_PROBE_S)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - due))

    async def _refresh_revocations(self) -> None:
        assert self.service is not None and self.storage is not None
        while True:
            await asyncio.sleep(self.settings.coordinator.token_refresh_s)
            try:
                self.service.revoked_token_ids = self.storage.revoked_token_ids()
            except Exception:
                logger.exception("reading revoked join tokens failed; keeping the previous list")
            if self.dht is not None:
                try:
                    self.dht.refresh(self.service.revoked_libp2p_ids(), now=time.time())
                except Exception:
                    logger.exception("refreshing the DHT node's credential and ban list failed")

    async def stop(self) -> None:
        """Stop accepting calls, finish in-flight ones, commit what is queued, close everything."""
        started = time.perf_counter()
        if self._grpc is not None:
            await self._grpc.stop(STOP_GRACE_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._web is not None:
            await self._web.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self.storage is not None:
            self.storage.close()
        if self._history_storage is not None:
            self._history_storage.close()
        if self.dht is not None:
            self.dht.shutdown()
        logger.info("coordinator stopped in %.2f s", time.perf_counter() - started)

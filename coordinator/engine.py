# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's event loop side: applies events to the pure core and commits them durably.

All events go through one writer task. It takes every event waiting in its queue (up to
``max_batch``), applies them one after another with the same ``now``, writes the result in one
SQLite transaction (group commit), and only then publishes the new state and answers the callers.
A failed commit answers every caller of the batch with :class:`StorageUnavailable` and leaves the
published state untouched, so what callers see is always what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from coordinator import actions as act
from coordinator import core
from coordinator import events as ev
from coordinator.plan import RunPlan
from coordinator.state import CoordinatorState, CoreConfig
from coordinator.storage import Storage
from lila_net.config import CoordinatorSection

logger = logging.getLogger(__name__)



class StorageUnavailable(RuntimeError):
    """The database refused a commit; the event did not happen. Safe to retry later."""


class Engine:
    """Owns the coordinator state and the storage; ``submit`` events from any coroutine.

    ``max_batch``: most events per transaction. Larger batches raise throughput under load (one
    commit for many heartbeats) but make each caller of a big batch wait for all of it: too large and
    the tail latency of every RPC grows, too small and commits cannot keep up with the peers
    (``python -m bench.coordinator_load`` measures RPC rate and p50/p99 latency against the number of
    peers). ``tick_interval_s``: how often expiry runs; leases expire at most this late.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        plan: RunPlan,
        config: CoreConfig,
        max_batch: int = CoordinatorSection.max_batch,
        tick_interval_s: float = CoordinatorSection.tick_interval_s,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_batch < 1 or tick_interval_s <= 0:
            raise ValueError("Engine: max_batch must be >= 1 and tick_interval_s > 0")
        self.storage = storage
        self.max_batch = max_batch
        self.tick_interval_s = tick_interval_s
        self.clock = clock
        self._state: CoordinatorState = storage.load(plan, config)
        self._queue: asyncio.Queue[tuple[ev.Event, asyncio.Future[list[act.Action]]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.events_applied = 0
        self.commits = 0

    @property
    def state(self) -> CoordinatorState:
        """The latest committed state."""
        return self._state

    async def start(self) -> None:
        """Start the writer and the ticker, and record the restart (fresh deadlines for everyone)."""
        self._tasks = [asyncio.create_task(self._writer(), name="coordinator-writer")]
        await self.submit(ev.Restarted())
        self._tasks.append(asyncio.create_task(self._ticker(), name="coordinator-ticker"))

    async def stop(self) -> None:
        """Stop the ticker, let the writer finish what is queued, then stop it."""
        for task in self._tasks[1:]:
            task.cancel()
        while self._tasks and not self._queue.empty() and not self._tasks[0].done():
            await asyncio.sleep(0)
        if self._tasks:
            self._tasks[0].cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def submit(self, event: ev.Event) -> list[act.Action]:
        """Apply ``event`` durably; returns its actions (raises :class:`StorageUnavailable`)."""
        future: asyncio.Future[list[act.Action]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        return await future

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                await self.submit(ev.Tick())
            except StorageUnavailable:
                logger.warning("tick not committed; will retry at the next interval")

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._apply_batch(batch)

    def _apply_batch(self, batch: list[tuple[ev.Event, asyncio.Future[list[act.Action]]]]) -> None:
        old = state = self._state
        now = self.clock()
        results: list[list[act.Action] | BaseException] = []
        every: list[act.Action] = []
        dirty: dict[str, set] = {}
        for event, _ in batch:
            try:
                state, actions, keys = core.apply_tracked(state, event, now)
            except Exception as exc:  # a bug in the core must not stop the writer
                logger.exception("core failed on %s; event dropped", type(event).__name__)
                results.append(exc)
                continue
            results.append(actions)
            every.extend(actions)
            for name, written in keys.items():
                dirty.setdefault(name, set()).update(written)
        try:
            if state is not old or every:
                self.storage.commit(old, state, every, dirty=dirty)
                self.commits += 1
        except Exception as exc:
            logger.exception("commit of %d events failed; none of them happened", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        StorageUnavailable(f"the coordinator's database refused the write: {exc}")
                    )
            return
        self._state = state
        self.events_applied += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A background thread that keeps the peer's session and leases alive at the coordinator."""

from __future__ import annotations

import logging
import threading

from .coordinator_client import CoordinatorClient, CoordinatorError

logger = logging.getLogger(__name__)


class Heartbeat:
    """Sends ``Heartbeat(phase)`` every ``interval_s`` until stopped; remembers the last answer.

    A missed heartbeat is only logged: the coordinator expires leases after ``lease_timeout_s`` (several
    intervals), so a short outage costs nothing.
    """

    def __init__(self, client: CoordinatorClient, *, interval_s: float) -> None:
        self._client = client
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.phase = "joining"
        self.last = None
        self._thread = threading.Thread(target=self._loop, name="lila-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.last = self._client.heartbeat(self.phase)
            except CoordinatorError as exc:
                logger.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 1)

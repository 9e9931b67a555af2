# SPDX-License-Identifier: AGPL-3.0-or-later
"""A background thread that keeps the peer's session and leases alive at the coordinator."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from lila_net import phases
from lila_net.proto import coordinator_pb2 as pb

from .coordinator_client import CoordinatorClient, CoordinatorError

logger = logging.getLogger(__name__)


class Heartbeat:
    """Sends ``Heartbeat(phase)`` every ``interval_s`` until stopped; remembers the last answer.

    A missed heartbeat is only logged: the coordinator expires leases after ``lease_timeout_s`` (several
    intervals), so a short outage costs nothing. ``on_reply`` sees every answer (the peer feeds the ban
    list in it to its averaging layer); :attr:`refused` is set when the coordinator answers
    PERMISSION_DENIED (this peer is banned or its session revoked): the peer should then leave.
    """

    def __init__(self, client: CoordinatorClient, *, interval_s: float,
                 on_reply: Callable[[pb.HeartbeatResponse], None] | None = None) -> None:
        self._client = client
        self._interval_s = interval_s
        self._on_reply = on_reply
        self.refused = False
        self._stop = threading.Event()
        self.phase = phases.JOINING
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
                if exc.code is grpc.StatusCode.PERMISSION_DENIED:
                    self.refused = True
                    logger.error("the coordinator refused this peer's heartbeat: %s", exc)
                else:
                    logger.warning("heartbeat failed: %s", exc)
                continue
            if self._on_reply is not None:
                try:
                    self._on_reply(self.last)
                except Exception:
                    logger.exception("handling a heartbeat reply failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # never started when the peer stopped before joining the DHT
            self._thread.join(timeout=self._interval_s + 1)

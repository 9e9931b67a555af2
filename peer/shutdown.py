# SPDX-License-Identifier: AGPL-3.0-or-later
"""Ctrl+C handling: the first SIGINT/SIGTERM asks the peer to stop cleanly, a second one exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from lila_net.exits import ExitStatus

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = int(ExitStatus.INTERRUPTED)  # a second signal: quit at once, without leaving cleanly


class GracefulStop:
    """Installs signal handlers that set :attr:`event`; the training loop checks it between steps.

    A clean stop releases the lease with its resume position, tells the coordinator the peer leaves,
    and shuts the averaging layer and the DHT down — within about 10 s. A second signal kills the whole
    process group (hivemind's p2pd children included) immediately.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._count = 0

    def install(self) -> GracefulStop:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count == 1:
            logger.warning("%s received: finishing the current step and leaving cleanly "
                           "(press Ctrl+C again to quit at once)", signal.Signals(signum).name)
            self.event.set()
            return
        logger.warning("second %s: exiting now", signal.Signals(signum).name)
        os._exit(EXIT_INTERRUPTED)

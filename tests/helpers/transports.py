# SPDX-License-Identifier: AGPL-3.0-or-later
"""hivemind transports (:class:`peer.averaging.Transport`: a DHT node with its p2pd) on 127.0.0.1 in the test
process, for the averaging and round-barrier tests."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from peer.averaging import Transport


@contextmanager
def local_transports(
    count: int, *, options: Callable[[int], dict[str, Any]] | None = None
) -> Iterator[list[Transport]]:
    """``count`` transports in start order, the first the bootstrap peer of the others; ``options(index)``
    are extra ``Transport.create`` arguments of each. hivemind logs warnings only and torch keeps one
    thread. On exit every transport is shut down and hivemind's shared-memory futures are collected while
    torch_shm_manager still runs."""
    torch.set_num_threads(1)
    logging.getLogger("hivemind").setLevel(logging.WARNING)
    started: list[Transport] = []
    try:
        for index in range(count):
            initial = started[0].visible_maddrs() if started else ()
            started.append(Transport.create(initial_peers=initial, **(options(index) if options else {})))
        yield started
    finally:
        for transport in started:
            transport.shutdown()
        gc.collect()

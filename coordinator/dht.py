# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's hivemind DHT node: the bootstrap peer every joiner is pointed at.

hivemind runs the DHT in a child process (plus its ``p2pd`` daemon), so start it before the gRPC
server (forking after gRPC has started threads is unsafe) and shut it down on exit. Importing
hivemind takes about 2 s; it happens only when a node is started.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class DhtNode:
    """A running DHT node: ``maddrs`` are the multiaddrs (with ``/p2p/<id>``) joiners should dial;
    ``start_seconds`` is how long the node took to come up, ``import_seconds`` the hivemind import."""

    dht: Any
    maddrs: list[str]
    start_seconds: float
    import_seconds: float

    def shutdown(self) -> None:
        """Stop the node and its daemon processes."""
        self.dht.shutdown()


def start_dht(*, host: str, port: int = 0, identity_path: str | None = None) -> DhtNode:
    """Start a DHT node listening on ``host:port`` over TCP (port 0: any free port).

    ``identity_path`` keeps the node's libp2p key in a file so its peer id survives restarts (the
    file is created if missing); without it every start gets a new id. ``host`` must be an IPv4
    address that joiners can reach (``0.0.0.0`` listens everywhere but is not a dialable address:
    use the public address in that case).
    """
    started = time.perf_counter()
    import hivemind  # deferred: slow import, only needed when a node runs

    imported = time.perf_counter()
    import_seconds = imported - started
    started = imported
    kwargs: dict[str, Any] = {"host_maddrs": [f"/ip4/{host}/tcp/{port}"], "start": True}
    if identity_path:
        kwargs["identity_path"] = identity_path
    dht = hivemind.DHT(**kwargs)
    maddrs = [str(m) for m in dht.get_visible_maddrs()]
    seconds = time.perf_counter() - started
    logger.info(
        "DHT node up in %.2f s (+%.2f s importing hivemind) at %s", seconds, import_seconds, ", ".join(maddrs)
    )
    return DhtNode(dht, maddrs, seconds, import_seconds)

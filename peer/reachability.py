# SPDX-License-Identifier: AGPL-3.0-or-later
"""How other peers reach this one: a dial-back check at join, and what the peer listens on and announces.

A peer that offers itself as a part owner or leader at an address nobody can dial splits the network:
every round becomes a group of one while each peer trains alone. So before its libp2p daemon starts,
the peer:

1. opens a probe listener on ``--host`` (default ``0.0.0.0``: every interface) at ``--port`` (0: a free
   port), which answers every connection with a random secret;
2. asks the coordinator to dial it back (``CheckReachability``) at the address the coordinator saw its
   calls come from — or at ``--announce HOST:PORT`` for a peer whose router forwards a port to it;
3. closes the probe and starts the daemon on the same port, announcing **only** the checked address.

Outcomes (:class:`Reachability`, one log line each):

- ``direct`` — the coordinator read the secret: the peer announces ``/ip4/<seen or announced>/tcp/<port>``
  and may lead rounds and own parts.
- ``relayed`` — the dial failed (a home NAT, a firewall): the peer announces nothing of its own, runs its
  DHT in client mode and dials out only: in a round with a direct peer it contributes and receives
  without owning a part (:mod:`peer.averaging.matchmaking`). It also asks its libp2p daemon for a
  circuit-relay slot at the coordinator's node, but no reservation has been observed with hivemind's
  daemon, so a round of only relayed peers has no leader and each trains alone (an error line per round,
  a split on the coordinator's status page): ``docs/decisions/0004-reachability-and-relays.md``.
- ``client`` — ``--client-mode``: only outgoing connections, never reached by anyone.

The check takes one round trip plus the coordinator's dial (``DIAL_TIMEOUT_S`` there when nothing answers).
Latency is not part of it; the benchmark ``python -m bench.internet`` measures what each mode costs.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from dataclasses import dataclass

from lila_net.address import parse_host_port
from lila_net.dht.node import tcp_maddr

logger = logging.getLogger(__name__)

DIRECT = "direct"
RELAYED = "relayed"
CLIENT = "client"
MODES = (DIRECT, RELAYED, CLIENT)
PROBE_SECRET_BYTES = 32
PROBE_ACCEPT_POLL_S = 0.2
PROBE_SEND_TIMEOUT_S = 2.0


@dataclass(frozen=True, kw_only=True)
class Reachability:
    """The outcome of the check: ``mode`` (``direct``/``relayed``/``client``), the multiaddrs the daemon listens
    on and announces, and ``detail`` (why, for the log line and the status page)."""

    mode: str
    listen_maddrs: tuple[str, ...]
    announce_maddrs: tuple[str, ...]
    detail: str

    @property
    def relayed(self) -> bool:
        return self.mode == RELAYED


def parse_announce(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--announce`` (``[v6]:PORT`` for IPv6); raises ValueError naming the fix."""
    return parse_host_port(text, what="--announce", example="203.0.113.7:31337 (the address and TCP port your "
                           "router forwards to this machine)")


class ProbeListener:
    """A TCP listener on ``host:port`` that writes ``secret`` to every connection, on a daemon thread.

    Keep it open while the coordinator dials; :meth:`close` frees the port for the libp2p daemon."""

    def __init__(self, *, host: str, port: int, secret: bytes) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise OSError(f"cannot listen on {host}:{port} for peers ({exc.strerror}): pick another --port, or "
                          "--host with an address of this machine") from None
        self._sock.listen(8)
        self._sock.settimeout(PROBE_ACCEPT_POLL_S)
        self._secret = secret
        self._stop = threading.Event()
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name="lila-reachability-probe", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.settimeout(PROBE_SEND_TIMEOUT_S)
                try:
                    conn.sendall(self._secret)
                except OSError:
                    logger.debug("the reachability probe could not answer a connection", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(PROBE_ACCEPT_POLL_S * 5)
        self._sock.close()

    def __enter__(self) -> ProbeListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_reachability(client, *, host: str, port: int, announce: str | None, client_mode: bool,
                       observed_host: str) -> Reachability:
    """Run the dial-back check (see the module docstring) through ``client`` (a ``CoordinatorClient``).

    ``host``/``port``: where to listen (port 0: a free one); ``announce``: ``--announce HOST:PORT`` or None;
    ``observed_host``: the address the coordinator saw at Join (what a direct peer announces).
    """
    if client_mode:
        return Reachability(mode=CLIENT, listen_maddrs=(tcp_maddr(host, port),), announce_maddrs=(),
                            detail="--client-mode: only outgoing connections")
    announce_host, announce_port = parse_announce(announce) if announce else ("", 0)
    listen_port = port or announce_port
    secret = secrets.token_bytes(PROBE_SECRET_BYTES)
    with ProbeListener(host=host, port=listen_port, secret=secret) as probe:
        dial_port = announce_port or probe.port
        reply = client.check_reachability(host=announce_host, port=dial_port, probe_secret=secret)
        listen_port = probe.port
    listen = (tcp_maddr(host, listen_port),)
    if reply.reachable:
        public = announce_host or observed_host
        return Reachability(mode=DIRECT, listen_maddrs=listen, announce_maddrs=(tcp_maddr(public, dial_port),),
                            detail=f"the coordinator dialed {reply.address} and reached this peer")
    fix = ("forward a TCP port of your router to this machine and pass --port P --announce PUBLIC_IP:P"
           if not announce else "check that the router forwards that port to this machine and --port matches")
    return Reachability(mode=RELAYED, listen_maddrs=listen, announce_maddrs=(),
                        detail=f"the coordinator could not dial {reply.address or f'{observed_host}:{dial_port}'} "
                               f"({reply.detail}); to take a full part, {fix}")

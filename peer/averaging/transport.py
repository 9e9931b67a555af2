# SPDX-License-Identifier: AGPL-3.0-or-later
"""The thin adapter over hivemind: the only module of the averaging layer that imports hivemind.

It gives the rest of the layer four things, all with plain types (peer ids are base58 ``str``, DHT values
are ``bytes``): an asyncio event loop on a background thread, byte streams to other peers over hivemind's
libp2p daemon (``P2P``, replicated from the DHT's daemon), stream handlers, and subkeyed DHT records with
an expiration time. Swapping hivemind for another P2P stack means rewriting this file only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import hivemind
from hivemind.p2p import P2P, PeerID
from hivemind.utils import get_dht_time

from lila_net.dht.evidence import SignedRecord
from lila_net.dht.records import RecordError, unwrap, wrap
from lila_net.dht.security import open_envelope

logger = logging.getLogger(__name__)

T = TypeVar("T")
StreamHandler = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOOPBACK_MADDRS = ("/ip4/127.0.0.1/tcp/0",)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
DEFAULT_BOOTSTRAP_TIMEOUT_S = 120.0
BOOTSTRAP_BACKOFF_START_S = 1.0
BOOTSTRAP_BACKOFF_MAX_S = 8.0
DEFAULT_REJOIN_PERIOD_S = 10.0


class TransportClosed(RuntimeError):
    """The transport was shut down (or its DHT died); create a new one to keep averaging."""


class Transport:
    """Event loop + P2P streams + DHT records of one peer.

    Create it with :meth:`create` (starts and owns a new ``hivemind.DHT``) or from a DHT the caller already
    runs (``Transport(dht)``, the caller keeps ownership and shuts the DHT down after this transport).
    Blocking helpers (:meth:`run`) must not be called from the transport's own loop thread.
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        *,
        owns_dht: bool = False,
        rejoin_peers: Sequence[str] = (),
        rejoin_period_s: float = DEFAULT_REJOIN_PERIOD_S,
        relayed: bool = False,
    ) -> None:
        self._dht = dht
        self._owns_dht = owns_dht
        self._closed = False
        self._handlers: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve_loop, name="lila-averaging-loop", daemon=True)
        self._thread.start()
        try:
            self._p2p = self.run(self._replicate_p2p(), timeout=START_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            raise
        self.peer_id: str = self._p2p.peer_id.to_base58()
        self.client_mode: bool = bool(dht.client_mode)
        self.relayed: bool = relayed  # behind a NAT: announces no address, DHT in client mode (decision 0004)
        rejoin = [PeerID.from_base58(str(addr).rsplit("/p2p/", 1)[1]) for addr in rejoin_peers if "/p2p/" in str(addr)]
        if rejoin and not self.client_mode:
            self.submit(self._rejoin_forever(rejoin, rejoin_period_s))

    @classmethod
    def create(
        cls,
        *,
        initial_peers: Sequence[str] = (),
        host_maddrs: Sequence[str] = LOOPBACK_MADDRS,
        announce_maddrs: Sequence[str] = (),
        client_mode: bool = False,
        relays: Sequence[str] = (),
        bootstrap_timeout_s: float = DEFAULT_BOOTSTRAP_TIMEOUT_S,
        **dht_options: Any,
    ) -> Transport:
        """Start a DHT node (joining ``initial_peers``, multiaddr strings) and a transport that owns it.

        ``host_maddrs`` defaults to loopback with an OS-chosen port; a public peer passes e.g.
        ``["/ip4/0.0.0.0/tcp/0"]``. ``client_mode=True`` for peers behind NAT: they can call but not be
        called, so the averaging layer never elects them leader nor gives them a part to own (they only
        contribute and receive); use it only when the reachability check fails, since every client peer
        adds load to the others. Extra options go to ``hivemind.DHT``: for an admitted-only DHT pass
        :func:`lila_net.dht.security.dht_options` (identity, ``authorizer``, ``record_validators``).

        ``announce_maddrs``: the only addresses the daemon tells others (checked reachable, see
        :mod:`peer.reachability`); empty: whatever it listens on, which on ``0.0.0.0`` includes loopback and
        private addresses nobody else can dial. ``relays``: multiaddrs of libp2p circuit relays (v2) to reserve
        a slot at; given, the peer declares itself private and runs its DHT in client mode, as a peer behind
        a NAT must. No reservation has been observed with hivemind 1.1.12's daemon, so such a peer is not
        reachable through them yet (``docs/decisions/0004-reachability-and-relays.md``).

        ``bootstrap_timeout_s``: when none of ``initial_peers`` answers (the coordinator's DHT node is
        restarting, a network blip), retry with backoff for this long before giving up. Set it above the
        time a coordinator takes to restart (seconds to a minute); 0 fails at the first attempt.
        """
        deadline = time.monotonic() + bootstrap_timeout_s
        backoff = BOOTSTRAP_BACKOFF_START_S
        while True:
            try:
                dht = hivemind.DHT(
                    initial_peers=list(initial_peers) or None,
                    host_maddrs=list(host_maddrs),
                    client_mode=client_mode or bool(relays),
                    start=True,
                    **_reachability_options(announce_maddrs, relays),
                    **dht_options,
                )
                break
            except Exception as error:
                if not initial_peers or "bootstrap" not in str(error) or time.monotonic() + backoff > deadline:
                    raise
                logger.warning("no DHT bootstrap peer answered (%s); retrying in %.0f s", error, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, BOOTSTRAP_BACKOFF_MAX_S)
        try:
            return cls(dht, owns_dht=True, rejoin_peers=initial_peers, relayed=bool(relays))
        except BaseException:
            dht.shutdown()
            raise

    async def _replicate_p2p(self) -> P2P:
        # our own client of the DHT's p2pd (not dht.replicate_p2p(), whose cached replica other code may
        # share): shutting this transport down then never closes someone else's connection
        future = self._dht.run_coroutine(_daemon_listen_maddr, return_future=True)
        return await P2P.replicate(await future)

    async def _rejoin_forever(self, peers: list[PeerID], period_s: float) -> None:
        """Ping the bootstrap peers every ``period_s``: a ping makes the callee add this node to its routing
        table, so a bootstrap node that restarted (and forgot everyone) learns the existing peers again and
        can introduce new joiners to them; without it the DHT splits into the old peers and the new ones."""
        while True:
            await asyncio.sleep(period_s)
            with contextlib.suppress(Exception):  # a peer that is down now is tried again next period
                await self._dht.run_coroutine(functools.partial(_ping_peers, peers=peers), return_future=True)

    # ----------------------------------------------------------------- event loop
    def _serve_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the transport loop and return a thread-safe future."""
        if self._closed:
            coro.close()
            raise TransportClosed("the averaging transport is shut down")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None) -> T:
        """Run ``coro`` on the transport loop and wait for its result (blocking; not from the loop thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Transport.run() was called from the transport's loop thread; await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    # ----------------------------------------------------------------- identity
    def visible_maddrs(self) -> list[str]:
        """Multiaddrs other peers can use as ``initial_peers`` to join this peer's DHT."""
        return [str(addr) for addr in self._dht.get_visible_maddrs()]

    @property
    def is_alive(self) -> bool:
        return not self._closed and self._dht.is_alive() and self._p2p.is_alive

    @staticmethod
    def now() -> float:
        """DHT time (seconds since the epoch) used for record expirations."""
        return get_dht_time()

    # ----------------------------------------------------------------- streams
    async def open_stream(
        self, peer_id: str, protocol: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a stream to ``protocol`` on ``peer_id`` (raises ValueError for a malformed peer id)."""
        try:
            remote = PeerID.from_base58(peer_id)
        except Exception:
            raise ValueError(f"{peer_id!r} is not a base58 libp2p peer id") from None
        _info, reader, writer = await self._p2p.call_binary_stream_handler(remote, protocol)
        return reader, writer

    async def add_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``handler(peer_id, reader, writer)`` runs for each incoming stream.

        The peer id is the libp2p-authenticated identity of the caller. Exceptions in the handler are
        logged and the stream closed; they never reach hivemind's loop.
        """

        async def _wrapped(info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = info.peer_id.to_base58()
            try:
                await handler(peer, reader, writer)
            except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
                logger.debug("stream %s from %s ended early", protocol, peer)
            except Exception:
                logger.exception("handler of %s failed on a stream from %s", protocol, peer)
            finally:
                writer.close()

        await self._p2p.add_binary_stream_handler(protocol, _wrapped)
        self._handlers.append(protocol)

    async def remove_handler(self, protocol: str) -> None:
        if protocol in self._handlers:
            self._handlers.remove(protocol)
            await self._p2p.remove_binary_stream_handler(protocol)

    # ----------------------------------------------------------------- DHT
    async def dht_store(self, key: str, subkey: str, value: bytes, expiration_time: float) -> bool:
        """Store ``value`` under ``key``/``subkey`` until ``expiration_time`` (DHT time); True if stored.

        The key name travels with the value (:mod:`lila_net.dht.records`) so that DHT nodes can
        schema-check it."""
        future = self._dht.store(key, wrap(key, value), expiration_time, subkey=subkey, return_future=True)
        return bool(await future)

    async def dht_get_subkeys(self, key: str) -> dict[str, bytes]:
        """Return the live ``subkey -> value`` entries under ``key`` (latest versions); entries that are not
        ``str -> bytes`` (written by something else) are dropped."""
        return {subkey: value for subkey, (value, _) in (await self.dht_get_signed(key)).items()}

    async def dht_get_signed(self, key: str) -> dict[str, tuple[bytes, SignedRecord | None]]:
        """Like :meth:`dht_get_subkeys`, with each value's signed record (None on a DHT without the record
        validator): what a reader forwards as evidence of its writer's claim (:mod:`lila_net.dht.evidence`)."""
        result = await self._dht.get(key, latest=True, return_future=True)
        if result is None or not isinstance(result.value, dict):
            return {}
        entries: dict[str, tuple[bytes, SignedRecord | None]] = {}
        for subkey, item in result.value.items():
            value = getattr(item, "value", None)
            if isinstance(subkey, str) and isinstance(value, bytes):
                try:
                    stored, envelope = open_envelope(value)
                    name, inner = unwrap(stored)
                except RecordError:
                    continue
                if name == key:
                    signed = None if envelope is None else SignedRecord(key, subkey, envelope, item.expiration_time)
                    entries[subkey] = (inner, signed)
        return entries

    # ----------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Remove the handlers, stop the loop thread and, if this transport owns it, the DHT."""
        if self._closed:
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._remove_all_handlers(), self._loop)
            fut.result(timeout=STOP_TIMEOUT_S)
        except Exception:
            logger.debug("could not remove stream handlers cleanly", exc_info=True)
        self._closed = True
        self._stop_loop()
        if self._owns_dht:
            self._dht.shutdown()

    async def _remove_all_handlers(self) -> None:
        for protocol in list(self._handlers):
            await self.remove_handler(protocol)
        await self._p2p.shutdown()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._cancel_tasks_and_stop)
        self._thread.join(STOP_TIMEOUT_S)

    def _cancel_tasks_and_stop(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_soon(self._loop.stop)


def _reachability_options(announce_maddrs: Sequence[str], relays: Sequence[str]) -> dict[str, Any]:
    """``P2P.create`` options: announce only the checked addresses; behind a NAT, reserve relay slots."""
    options: dict[str, Any] = {}
    if announce_maddrs:
        options["announce_maddrs"] = list(announce_maddrs)
    if relays:
        options.update(use_relay=True, use_auto_relay=True, trusted_relays=list(relays), force_reachability="private")
    return options


async def _ping_peers(_dht: hivemind.DHT, node: Any, *, peers: Sequence[PeerID]) -> None:
    """Runs inside the DHT process: ping each peer (which adds this node to its routing table)."""
    await asyncio.gather(*(node.protocol.call_ping(peer) for peer in peers), return_exceptions=True)


async def _daemon_listen_maddr(_dht: hivemind.DHT, node: Any) -> Any:
    """Runs inside the DHT process: the control address of its p2p daemon."""
    return node.p2p.daemon_listen_maddr

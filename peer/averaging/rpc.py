# SPDX-License-Identifier: AGPL-3.0-or-later
"""Request/reply calls over transport streams: authorization, limits, timeouts and byte counts.

Server side: :func:`serve` registers a handler ``async (peer_id, frame) -> Reply``. The request's
credential is checked before its header is read; a bad or refused request gets an ERROR frame, never a
crash. Every request is read against a deadline (``read_timeout`` for prefix, credential and header, plus
the time the declared payload takes at ``min_bytes_per_s``), so a caller that opens streams and then
stalls ties up nothing for long. Client side: :func:`call` sends one request and reads one reply within a
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from peer.averaging.auth import Authorize
from peer.averaging.transport import Transport
from peer.averaging.wire import (
    ERR_BAD_REQUEST,
    ERR_INTERNAL,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    ERR_UNAUTHORIZED,
    KIND_REPLY,
    KIND_REQUEST,
    Frame,
    Limits,
    TooLarge,
    Unauthorized,
    WireError,
    read_frame,
    write_error,
    write_frame,
)

logger = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MIN_PAYLOAD_BYTES_PER_S = 64 * 1024  # 512 kbit/s: below any volunteer's uplink


class Refused(Exception):
    """Raised by a handler to answer with an ERROR frame ``code``/``message`` (e.g. "not_leader")."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


@dataclass
class Reply:
    """What a handler answers. ``account(received, sent)`` is called exactly once, when the reply was
    written (``sent`` = its size) or failed to be (``sent`` = 0)."""

    header: dict[str, Any]
    payload: bytes | memoryview = b""
    max_bytes_per_s: float | None = None
    account: Callable[[int, int], None] | None = None


@dataclass
class CallResult:
    frame: Frame
    bytes_sent: int
    bytes_received: int


@dataclass
class Endpoint:
    """This peer's side of every call: its credential, the authorizer for the other side, its transport."""

    transport: Transport
    credential: bytes
    authorize: Authorize
    reply_limits: Limits = field(default_factory=lambda: Limits(4096, 65536, 0))


Handler = Callable[[str, Frame], Awaitable[Reply]]


async def read_request(
    reader: asyncio.StreamReader,
    *,
    peer_id: str,
    authorize: Authorize,
    limits: Limits,
    read_timeout: float,
    min_bytes_per_s: float,
) -> Frame:
    """Read one REQUEST frame against a deadline: prefix, credential and header within ``read_timeout``
    seconds, then the payload (its length already checked against ``limits``) within ``read_timeout +
    payload_len / min_bytes_per_s``. Raises ``asyncio.TimeoutError`` past either deadline."""
    frame, prefix = await asyncio.wait_for(
        read_frame(
            reader, peer_id=peer_id, authorize=authorize, limits=limits, expect=KIND_REQUEST, read_payload=False
        ),
        timeout=read_timeout,
    )
    if not prefix.payload_len:
        return frame
    payload = await asyncio.wait_for(
        reader.readexactly(prefix.payload_len), timeout=read_timeout + prefix.payload_len / min_bytes_per_s
    )
    return replace(frame, payload=payload, wire_bytes=frame.wire_bytes + len(payload))


async def serve(
    endpoint: Endpoint,
    protocol: str,
    handler: Handler,
    *,
    limits: Limits,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    min_bytes_per_s: float = DEFAULT_MIN_PAYLOAD_BYTES_PER_S,
) -> None:
    """Register ``handler`` for ``protocol`` on the endpoint's transport.

    ``read_timeout`` / ``min_bytes_per_s``: the request's deadline (see :func:`read_request`); a request
    not read by then gets a ``timeout`` ERROR frame and its stream is closed. Set ``read_timeout`` to the
    callers' own request timeout and ``min_bytes_per_s`` below the slowest honest uplink; too tight
    refuses slow honest peers, too loose lets stalled streams pile up.
    ``tests/integration/test_attacks_memory.py`` measures a stalled caller.
    """
    if not (read_timeout > 0 and min_bytes_per_s > 0):
        raise ValueError(
            f"read_timeout={read_timeout} and min_bytes_per_s={min_bytes_per_s} must both be positive: "
            "a request read without a deadline lets any caller hold a stream forever"
        )

    async def _on_stream(peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            frame = await read_request(
                reader,
                peer_id=peer_id,
                authorize=endpoint.authorize,
                limits=limits,
                read_timeout=read_timeout,
                min_bytes_per_s=min_bytes_per_s,
            )
        except asyncio.TimeoutError:
            logger.warning("%s request from %s was not read within its deadline; closing", protocol, peer_id)
            with contextlib.suppress(asyncio.TimeoutError):  # a caller that does not read either
                await asyncio.wait_for(
                    write_error(writer, ERR_TIMEOUT, "request not received in time"), timeout=read_timeout
                )
            return
        except Unauthorized as error:
            logger.warning("refused %s from %s: %s", protocol, peer_id, error)
            await write_error(
                writer, ERR_UNAUTHORIZED, "credential refused; ask the coordinator for a session"
            )
            return
        except TooLarge as error:
            logger.warning("refused %s from %s: %s", protocol, peer_id, error)
            await write_error(writer, ERR_TOO_LARGE, str(error))
            return
        except WireError as error:
            logger.warning("malformed %s request from %s: %s", protocol, peer_id, error)
            await write_error(writer, ERR_BAD_REQUEST, str(error))
            return
        try:
            reply = await handler(peer_id, frame)
        except Refused as refusal:
            await write_error(writer, refusal.code, refusal.message)
            return
        except WireError as error:
            await write_error(writer, ERR_BAD_REQUEST, str(error))
            return
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception:
            logger.exception("handler of %s failed for %s", protocol, peer_id)
            await write_error(writer, ERR_INTERNAL, "the peer failed to handle the request")
            return
        sent = 0
        try:
            sent = await write_frame(
                writer,
                kind=KIND_REPLY,
                credential=endpoint.credential,
                header=reply.header,
                payload=reply.payload,
                max_bytes_per_s=reply.max_bytes_per_s,
            )
            await _until_caller_closes(reader, timeout=read_timeout + sent / min_bytes_per_s)
        finally:
            if reply.account is not None:
                reply.account(frame.wire_bytes, sent)

    await endpoint.transport.add_handler(protocol, _on_stream)


async def _until_caller_closes(reader: asyncio.StreamReader, *, timeout: float) -> None:
    """Keep a replied stream open until the caller, having read the reply, closes its end (bounded by
    ``timeout``). Closing first can drop what the local p2p daemon still buffers for a slow link: a
    171 KB aggregate arrived cut at 128 KiB on a 5 Mbit/s uplink (``bench.volunteers``)."""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        await asyncio.wait_for(reader.read(1), timeout=timeout)


async def call(
    endpoint: Endpoint,
    peer_id: str,
    protocol: str,
    *,
    header: dict[str, Any],
    payload: bytes | memoryview = b"",
    timeout: float,
    reply_limits: Limits | None = None,
) -> CallResult:
    """Send one request to ``peer_id`` and return its reply within ``timeout`` seconds.

    Raises ``RemoteError`` (the peer refused), ``Unauthorized`` (the peer's own credential was refused),
    ``WireError``, ``asyncio.TimeoutError`` or a connection error; the caller treats all of them as
    "this peer did not answer".
    """
    limits = reply_limits or endpoint.reply_limits

    async def _exchange() -> CallResult:
        reader, writer = await endpoint.transport.open_stream(peer_id, protocol)
        try:
            sent = await write_frame(
                writer, kind=KIND_REQUEST, credential=endpoint.credential, header=header, payload=payload
            )
            frame, _ = await read_frame(
                reader, peer_id=peer_id, authorize=endpoint.authorize, limits=limits, expect=KIND_REPLY
            )
            return CallResult(frame, sent, frame.wire_bytes)
        finally:
            writer.close()

    return await asyncio.wait_for(_exchange(), timeout=timeout)

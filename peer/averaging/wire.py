# SPDX-License-Identifier: AGPL-3.0-or-later
"""Frames exchanged on the averaging streams: a fixed binary prefix, a credential, a JSON header, raw bytes.

Layout (big-endian)::

    prefix  = magic "LILA" | version u8 | kind u8 | credential_len u16 | header_len u32 | payload_len u64
    frame   = prefix | credential | header (UTF-8 JSON object) | payload (opaque bytes)

``kind`` is REQUEST, REPLY (success, carries the responder's credential) or ERROR (no credential, header
``{"code": ..., "message": ...}``). The receiver checks every length against its limits and calls the
authorizer on the credential before it reads the header or the payload. Nothing is unpickled: the header
is parsed as JSON into a ``dict`` and validated by the caller; the payload is handed over as bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peer.averaging.auth import Authorize, check_authorized

logger = logging.getLogger(__name__)

MAGIC = b"LILA"
VERSION = 1
PREFIX = struct.Struct(">4sBBHIQ")
KIND_REQUEST = 1
KIND_REPLY = 2
KIND_ERROR = 3
KINDS = (KIND_REQUEST, KIND_REPLY, KIND_ERROR)
WRITE_CHUNK_BYTES = 1 << 20
ERROR_MESSAGE_MAX_CHARS = 500

# error codes carried in ERROR frames
ERR_UNAUTHORIZED = "unauthorized"
ERR_BAD_REQUEST = "bad_request"
ERR_TOO_LARGE = "too_large"
ERR_INTERNAL = "internal"
ERR_TIMEOUT = "timeout"


class WireError(ValueError):
    """A frame is malformed or breaks a limit; the message says which field and what was expected."""


class TooLarge(WireError):
    """A frame declares a credential, header or payload larger than the receiver accepts."""


class Unauthorized(WireError):
    """The sender's credential was refused by the authorizer."""


class RemoteError(RuntimeError):
    """The other peer answered with an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"remote peer refused the call ({code}): {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Largest credential, header and payload a receiver reads; anything larger is refused unread."""

    max_credential_bytes: int
    max_header_bytes: int
    max_payload_bytes: int


@dataclass(frozen=True)
class Prefix:
    kind: int
    credential_len: int
    header_len: int
    payload_len: int


@dataclass(frozen=True)
class Frame:
    """A received frame. ``wire_bytes`` counts everything read for it (prefix included)."""

    kind: int
    credential: bytes
    header: dict[str, Any]
    payload: bytes
    wire_bytes: int


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(
            f"frame header is not UTF-8 JSON ({error}); the sender speaks another protocol"
        ) from None
    if not isinstance(header, dict):
        raise WireError(f"frame header must be a JSON object, got {type(header).__name__}")
    return header


async def write_frame(
    writer: asyncio.StreamWriter,
    *,
    kind: int,
    credential: bytes,
    header: dict[str, Any],
    payload: bytes | memoryview = b"",
    max_bytes_per_s: float | None = None,
) -> int:
    """Write one frame and return the number of bytes written.

    ``max_bytes_per_s`` paces the payload (None = as fast as the stream takes it); it is how a volunteer
    caps the upload bandwidth used for serving state.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind}; use one of {KINDS}")
    raw_header = encode_header(header)
    prefix = PREFIX.pack(MAGIC, VERSION, kind, len(credential), len(raw_header), len(payload))
    writer.write(prefix + credential + raw_header)
    view = memoryview(payload)
    started = time.monotonic()
    for offset in range(0, len(view), WRITE_CHUNK_BYTES):
        chunk = view[offset : offset + WRITE_CHUNK_BYTES]
        writer.write(chunk)
        await writer.drain()
        if max_bytes_per_s is not None:
            ahead = (offset + len(chunk)) / max_bytes_per_s - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await writer.drain()
    return len(prefix) + len(credential) + len(raw_header) + len(view)


async def write_error(writer: asyncio.StreamWriter, code: str, message: str) -> int:
    """Send an ERROR frame (no credential) saying why the request was refused."""
    return await write_frame(
        writer,
        kind=KIND_ERROR,
        credential=b"",
        header={"code": code, "message": message[:ERROR_MESSAGE_MAX_CHARS]},
    )


async def read_prefix(reader: asyncio.StreamReader) -> Prefix:
    raw = await reader.readexactly(PREFIX.size)
    magic, version, kind, credential_len, header_len, payload_len = PREFIX.unpack(raw)
    if magic != MAGIC:
        raise WireError(f"frame starts with {magic!r}, expected {MAGIC!r}: the sender is not a LILA peer")
    if version != VERSION:
        raise WireError(f"frame version {version}, this peer speaks {VERSION}: upgrade the older peer")
    if kind not in KINDS:
        raise WireError(f"frame kind {kind} is unknown (expected one of {KINDS})")
    return Prefix(kind, credential_len, header_len, payload_len)


async def read_frame(
    reader: asyncio.StreamReader,
    *,
    peer_id: str,
    authorize: Authorize,
    limits: Limits,
    expect: int,
    read_payload: bool = True,
) -> tuple[Frame, Prefix]:
    """Read one frame of kind ``expect`` from ``peer_id``.

    Order: prefix, limit checks, credential, authorization, header, payload. An ERROR frame raises
    :class:`RemoteError`; a refused credential raises :class:`Unauthorized` with nothing else read; an
    oversize field raises :class:`TooLarge`. With ``read_payload=False`` the payload is left on the stream
    (``Frame.payload`` is empty) for the caller to read in chunks, see :func:`read_payload_chunks`.
    """
    prefix = await read_prefix(reader)
    if prefix.kind == KIND_ERROR:
        if prefix.credential_len or prefix.payload_len or prefix.header_len > limits.max_header_bytes:
            raise WireError("malformed ERROR frame (credential, payload or oversize header)")
        header = decode_header(await reader.readexactly(prefix.header_len))
        raise RemoteError(
            str(header.get("code", "?")), str(header.get("message", ""))[:ERROR_MESSAGE_MAX_CHARS]
        )
    if prefix.kind != expect:
        raise WireError(f"expected a frame of kind {expect}, got kind {prefix.kind}")
    if prefix.credential_len > limits.max_credential_bytes:
        raise TooLarge(f"credential of {prefix.credential_len} bytes exceeds {limits.max_credential_bytes}")
    if prefix.header_len > limits.max_header_bytes:
        raise TooLarge(f"header of {prefix.header_len} bytes exceeds {limits.max_header_bytes}")
    if prefix.payload_len > limits.max_payload_bytes:
        raise TooLarge(f"payload of {prefix.payload_len} bytes exceeds {limits.max_payload_bytes}")
    credential = await reader.readexactly(prefix.credential_len)
    if not check_authorized(authorize, peer_id, credential):
        raise Unauthorized(f"peer {peer_id} presented a credential that was refused")
    header = decode_header(await reader.readexactly(prefix.header_len))
    payload = await reader.readexactly(prefix.payload_len) if read_payload else b""
    wire_bytes = PREFIX.size + prefix.credential_len + prefix.header_len + len(payload)
    return Frame(prefix.kind, credential, header, payload, wire_bytes), prefix


async def read_payload_chunks(
    reader: asyncio.StreamReader,
    length: int,
    *,
    chunk_timeout: float,
    chunk_bytes: int = WRITE_CHUNK_BYTES,
    on_chunk: Callable[[int], None] | None = None,
) -> bytearray:
    """Read ``length`` payload bytes in chunks, each within ``chunk_timeout`` seconds (a stalled sender
    raises ``asyncio.TimeoutError``, a vanished one ``asyncio.IncompleteReadError``). ``on_chunk`` gets the
    number of bytes received so far.

    The buffer grows as bytes arrive, never to the announced ``length`` up front: a sender that announces
    gigabytes and sends little costs the receiver what it sent, not what it announced. The buffer itself
    is returned (no final copy)."""
    buffer = bytearray()
    while len(buffer) < length:
        size = min(chunk_bytes, length - len(buffer))
        buffer += await asyncio.wait_for(reader.readexactly(size), timeout=chunk_timeout)
        if on_chunk is not None:
            on_chunk(len(buffer))
    return buffer


def require(header: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``header[key]`` if present and of ``kind`` (bool is never accepted as int), else WireError."""
    if key not in header:
        raise WireError(f"header field {key!r} is missing")
    value = header[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise WireError(f"header field {key!r} must be {kind}, got a bool")
    if not isinstance(value, kinds):
        raise WireError(f"header field {key!r} must be {kind}, got {type(value).__name__}")
    return value

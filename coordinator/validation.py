# SPDX-License-Identifier: AGPL-3.0-or-later
"""Checks of request fields; each failure names the field and what a valid value looks like."""

from __future__ import annotations

import math
from collections.abc import Collection

from coordinator.state import Position
from lila_net import aggregation, credentials

MAX_NAME_CHARS = 64
MAX_SHORT_TEXT_CHARS = 128
MAX_PHASE_CHARS = 32
MAX_REASON_CHARS = 200
MAX_LEASE_ID_CHARS = 64
MAX_PORT = 65535
MAX_COUNT = 2**62
MAX_LIBP2P_ID_CHARS = 128
MAX_GROUP_ID_CHARS = 64
MAX_EVIDENCE = 64
STRIKE_REASONS = aggregation.REASONS
MAX_PUBLIC_KEY_BYTES = credentials.MAX_PUBLIC_KEY_BYTES
SHA256_BYTES = 32
MAX_GROUP_SIZE = 65536  # far above any averaging group; a larger value is a broken client
REACHABILITIES = ("direct", "relayed", "client")  # how other peers reach a peer (peer.reachability)


class InvalidArgument(ValueError):
    """A request field is invalid; the message starts with the field's name."""


def text(field: str, value: str, *, max_chars: int, required: bool = False) -> str:
    """A printable string of at most ``max_chars`` characters (non-empty if ``required``)."""
    if required and not value.strip():
        raise InvalidArgument(f"{field} is empty: it is required")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} has {len(value)} characters; at most {max_chars} are allowed")
    if not value.isprintable():
        raise InvalidArgument(f"{field} contains control characters; use printable text")
    return value


def count(field: str, value: int) -> int:
    """A non-negative integer (protobuf int64 fields can carry negatives)."""
    if not 0 <= value <= MAX_COUNT:
        raise InvalidArgument(f"{field}={value}: must be between 0 and {MAX_COUNT}")
    return value


def number(field: str, value: float) -> float:
    """A finite, non-negative float."""
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{field}={value}: must be a finite number >= 0")
    return value


def host_port(field: str, value: str) -> str:
    """Empty, or ``host:port`` with a port in 1..65535."""
    text(field, value, max_chars=MAX_SHORT_TEXT_CHARS)
    if not value:
        return value
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 1 <= int(port) <= MAX_PORT
        or any(c.isspace() for c in host)
    ):
        raise InvalidArgument(f"{field}={value!r}: use host:port, e.g. 203.0.113.5:9100, or leave it empty")
    return value


def position(field: str, message, present: bool) -> Position:
    """A ResumePosition message that must be set."""
    if not present:
        raise InvalidArgument(f"{field} is missing: send the absolute position reached in the shard")
    return Position(
        count(f"{field}.docs_consumed", message.docs_consumed),
        count(f"{field}.tokens_consumed", message.tokens_consumed),
    )


def lease_id(value: str) -> str:
    """A lease id as handed out by LeaseShard."""
    return text("lease_id", value, max_chars=MAX_LEASE_ID_CHARS, required=True)


def report_seq(value: int) -> int:
    """A report sequence number (starts at 1)."""
    if value < 1:
        raise InvalidArgument(
            f"report_seq={value}: sequence numbers start at 1 and increase with every report"
        )
    return value


def libp2p_id(field: str, value: str) -> str:
    """A base58 libp2p peer id (as hivemind prints them)."""
    text(field, value, max_chars=MAX_LIBP2P_ID_CHARS, required=True)
    if not credentials.PEER_ID_PATTERN.match(value):
        raise InvalidArgument(f"{field}={value[:40]!r}: not a base58 libp2p peer id")
    return value


def blob(field: str, value: bytes, *, max_bytes: int) -> bytes:
    """Non-empty bytes of at most ``max_bytes``."""
    if not value:
        raise InvalidArgument(f"{field} is empty: it is required")
    if len(value) > max_bytes:
        raise InvalidArgument(f"{field} has {len(value)} bytes; at most {max_bytes} are allowed")
    return value


def choice(field: str, value: str, allowed: Collection[str]) -> str:
    """One of ``allowed``."""
    if value not in allowed:
        raise InvalidArgument(f"{field}={value[:40]!r}: use one of {', '.join(sorted(allowed))}")
    return value


def sha256(field: str, value: bytes) -> str:
    """Empty (an older client) or a raw 32-byte SHA-256 digest; returned as hex (empty stays empty)."""
    if value and len(value) != SHA256_BYTES:
        raise InvalidArgument(
            f"{field} has {len(value)} bytes: send the raw {SHA256_BYTES}-byte SHA-256 digest "
            "(not its hex text), or nothing"
        )
    return value.hex()


def group_size(field: str, value: int) -> int:
    """A group size: 0 (not said) up to ``MAX_GROUP_SIZE``."""
    if not 0 <= value <= MAX_GROUP_SIZE:
        raise InvalidArgument(f"{field}={value}: must be between 0 (unknown) and {MAX_GROUP_SIZE} peers")
    return value


def group(field: str, values) -> frozenset[str]:
    """The libp2p ids of an averaging group (at most ``MAX_GROUP_SIZE``; empty: not said)."""
    if len(values) > MAX_GROUP_SIZE:
        raise InvalidArgument(f"{field} has {len(values)} entries; at most {MAX_GROUP_SIZE} peers")
    return frozenset(libp2p_id(f"{field}[{i}]", value) for i, value in enumerate(values))


def reachability(field: str, value: str) -> str:
    """Empty (an older client) or one of ``REACHABILITIES``."""
    if value and value not in REACHABILITIES:
        raise InvalidArgument(f"{field}={value[:40]!r}: use one of {', '.join(REACHABILITIES)}, or leave it empty")
    return value

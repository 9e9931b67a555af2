# SPDX-License-Identifier: AGPL-3.0-or-later
"""What the run's DHT records may contain: the key name travels with the value, and every key has a schema.

hivemind stores a record under the hash of its key, so a validator cannot tell from the record which key
it belongs to, and our keys are per round (``lila/{run}/avg/{round}/peers``) so they cannot be listed in a
hivemind ``SchemaValidator`` either. :class:`~peer.averaging.transport.Transport` therefore stores every
value as ``b"LKEY" | u16 key length | key (UTF-8) | value``; the validator checks that the key hashes to
the record's key id, that the key is one of :mod:`lila_net.dht.keys`, and that the value fits the
schema of that key (pydantic v1 models with strict types: hivemind's DHT needs ``pydantic.v1``):

==============================  ===========================================================
``lila/{run}/avg/{n}/peers``    ``{"v": 1, "client": bool}`` (at most 256 bytes)
``lila/{run}/verify/{n}``       64 lowercase hex digits (a sha256)
``lila/{run}/state``            ``{"outer_step": int >= 0, "params_sha256"?: hex}`` (at most 1 KiB)
``lila/{run}/ready/{n}``        ``{"v": 1}`` (peer/round_sync.py: "I reached round n"; ``"go": true``: "and I
                                stopped waiting")
``lila/{run}/absent``           ``{"why": "idle" | "left"}`` (peer/round_sync.py)
==============================  ===========================================================

Every value is written under the writer's own peer id as subkey (checked by the validator).

Everything here is pure (no hivemind import), so it is tested without a DHT.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import pydantic.v1 as pydantic

from lila_net.credentials import PEER_ID_PATTERN

# the limits every writer (matchmaking, state sync, verification, the round barrier) and the validator share
MAX_ANNOUNCEMENT_BYTES = 256
MAX_STATE_RECORD_BYTES = 1024
GROUP_ID_BYTES = 8
GROUP_ID_PATTERN = re.compile(rf"^[0-9a-f]{{{2 * GROUP_ID_BYTES}}}$")
HASH_PATTERN = re.compile(rb"^[0-9a-f]{64}$")
KEY_MAGIC = b"LKEY"
KEY_PREFIX = struct.Struct(">4sH")
MAX_KEY_CHARS = 256
PEER_ID_REGEX = PEER_ID_PATTERN.pattern
KEY_PATTERN = re.compile(
    r"^lila/(?P<run>[A-Za-z0-9_.-]{1,64})/"
    r"(?:avg/(?P<avg_round>\d{1,18})/(?P<avg_kind>peers)|verify/(?P<verify_round>\d{1,18})"
    r"|ready/(?P<ready_round>\d{1,18})|(?P<absent>absent)|(?P<state>state))$"
)
MAX_MARKER_BYTES = 256  # ready and absent markers of the round barrier


class RecordError(ValueError):
    """A DHT record does not fit the run's schema; the message names the problem."""


class _Strict(pydantic.BaseModel):
    class Config:
        extra = pydantic.Extra.forbid


class AnnouncementRecord(_Strict):
    """A peer announcing itself for a round (``client``: no direct incoming streams; ``relayed``: reachable
    through a circuit relay, see :mod:`peer.reachability`)."""

    v: pydantic.conint(strict=True, ge=1, le=1)  # type: ignore[valid-type]
    client: pydantic.StrictBool
    relayed: pydantic.StrictBool = False


class StateRecord(_Strict):
    """A state donor's announcement."""

    outer_step: pydantic.conint(strict=True, ge=0)  # type: ignore[valid-type]
    params_sha256: pydantic.constr(strict=True, regex=r"^([0-9a-f]{64})?$") | None = None  # type: ignore[valid-type]


class ReadyRecord(_Strict):
    """A peer saying it reached a round (round barrier)."""

    v: pydantic.conint(strict=True, ge=1, le=1)  # type: ignore[valid-type]
    go: pydantic.StrictBool = False  # it stopped waiting and went to average: the others follow


class AbsentRecord(_Strict):
    """A peer saying the others should not wait for it."""

    why: pydantic.constr(strict=True, regex=r"^(idle|left)$")  # type: ignore[valid-type]


def wrap(key: str, value: bytes) -> bytes:
    """``value`` prefixed with its key name (what the transport stores)."""
    raw = key.encode("utf-8")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"DHT key of {len(key)} characters exceeds {MAX_KEY_CHARS}")
    return KEY_PREFIX.pack(KEY_MAGIC, len(raw)) + raw + value


def unwrap(data: bytes) -> tuple[str, bytes]:
    """``(key, value)`` of a stored value; raises :class:`RecordError` when it is not one of ours."""
    if len(data) < KEY_PREFIX.size:
        raise RecordError("record value is shorter than its key prefix")
    magic, length = KEY_PREFIX.unpack_from(data)
    if magic != KEY_MAGIC or length > MAX_KEY_CHARS * 4 or len(data) < KEY_PREFIX.size + length:
        raise RecordError("record value does not start with a LILA key prefix")
    try:
        key = data[KEY_PREFIX.size : KEY_PREFIX.size + length].decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("record key is not UTF-8") from None
    return key, data[KEY_PREFIX.size + length :]


def _json_object(value: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(value) > limit:
        raise RecordError(f"{what} record of {len(value)} bytes exceeds {limit}")
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RecordError(f"{what} record is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise RecordError(f"{what} record is not a JSON object")
    return data


def check_record(key: str, value: bytes, *, writer: str) -> None:
    """Raise :class:`RecordError` unless ``value`` fits the schema of ``key`` written by peer ``writer``."""
    match = KEY_PATTERN.match(key)
    if match is None:
        raise RecordError(f"key {key[:80]!r} is not a LILA run key")
    try:
        if match["avg_kind"] == "peers":
            AnnouncementRecord(**_json_object(value, MAX_ANNOUNCEMENT_BYTES, "announcement"))
        elif match["verify_round"] is not None:
            if not HASH_PATTERN.match(value):
                raise RecordError("verify record is not a hex sha256")
        elif match["ready_round"] is not None:
            ReadyRecord(**_json_object(value, MAX_MARKER_BYTES, "ready"))
        elif match["absent"] is not None:
            AbsentRecord(**_json_object(value, MAX_MARKER_BYTES, "absent"))
        else:
            StateRecord(**_json_object(value, MAX_STATE_RECORD_BYTES, "state"))
    except pydantic.ValidationError as exc:
        raise RecordError(f"record of {key[:80]!r} breaks its schema: {exc.errors()[:3]}") from None

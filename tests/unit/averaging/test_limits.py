# SPDX-License-Identifier: AGPL-3.0-or-later
"""Input limits and the no-unpickling rule: an audit of our own code, and the order of checks on the
averaging wire (limits and credential before anything else of a frame is read)."""

from __future__ import annotations

import ast
import asyncio
import struct
from pathlib import Path

import pytest

from coordinator.settings import ServerSettings
from peer.averaging.config import AveragingConfig, StateSyncConfig
from peer.averaging.wire import (
    KIND_REQUEST,
    MAGIC,
    PREFIX,
    VERSION,
    Limits,
    TooLarge,
    Unauthorized,
    read_frame,
)
from tests.helpers.paths import REPO

PACKAGES = ("coordinator", "peer", "lila_codec", "lila_data", "lila_model", "lila_run")
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "__import__", "compile"}


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_nothing_is_unpickled_or_evaluated() -> None:
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno} imports {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                problems.append(f"{where}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if isinstance(func, ast.Name) and name in FORBIDDEN_CALLS:
                    problems.append(f"{where}:{node.lineno} calls {name}()")
                if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
                    safe = _keyword(node, "weights_only")
                    if not (isinstance(safe, ast.Constant) and safe.value is True):
                        problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
                allow = _keyword(node, "allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value is True:
                    problems.append(f"{where}:{node.lineno} allow_pickle=True")
    assert problems == []
    assert len(_sources()) > 50  # the audit really walked the packages


def test_every_input_has_a_size_limit() -> None:
    assert ServerSettings().coordinator.max_message_bytes == 4 * 1024 * 1024  # gRPC requests to the coordinator
    averaging = AveragingConfig()
    assert (averaging.max_credential_bytes, averaging.max_header_bytes) == (4096, 65536)
    assert averaging.max_part_payload(1000) == 4000 + 65536  # fp32 plus a codec header, no more
    state = StateSyncConfig()
    assert (state.max_credential_bytes, state.max_table_bytes) == (4096, 16 * 1024 * 1024)


def _frame(credential: bytes, header: bytes, payload_len: int = 0) -> bytes:
    return PREFIX.pack(MAGIC, VERSION, KIND_REQUEST, len(credential), len(header), payload_len) + credential + header


def _read(data: bytes, authorize, limits: Limits):
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader, peer_id="QmPeer", authorize=authorize, limits=limits, expect=KIND_REQUEST)

    return asyncio.run(scenario())


def test_wire_checks_limits_then_credential_before_reading_the_rest() -> None:
    limits = Limits(16, 64, 128)
    seen = []

    def authorize(peer_id: str, credential: bytes) -> bool:
        seen.append(credential)
        return credential == b"good"

    # declared sizes over the limits: refused from the 24-byte prefix alone (nothing else is even sent)
    for credential_len, header_len, payload_len, what in ((17, 2, 0, "credential"), (4, 65, 0, "header"), (4, 2, 2**40, "payload")):
        prefix = PREFIX.pack(MAGIC, VERSION, KIND_REQUEST, credential_len, header_len, payload_len)
        with pytest.raises(TooLarge, match=what):
            _read(prefix, authorize, limits)
    assert seen == []
    # a refused credential: the (garbage) header after it is never parsed
    with pytest.raises(Unauthorized):
        _read(_frame(b"evil", b"\xff\xfe not json"), authorize, limits)
    frame, _ = _read(_frame(b"good", b'{"a":1}'), authorize, limits)
    assert frame.header == {"a": 1} and seen == [b"evil", b"good"]
    assert struct.calcsize(">4sBBHIQ") == PREFIX.size == 20

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Peer logging: every line carries the peer id (text or JSON), set once the coordinator names the peer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from peer.logs import UNKNOWN_PEER, PeerContext, configure_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """Restore the root and hivemind loggers (other tests may have imported and tuned hivemind)."""
    root, hivemind = logging.getLogger(), logging.getLogger("hivemind")
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in (root, hivemind)]
    try:
        yield
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def test_text_lines_carry_the_peer_id_from_the_moment_it_is_known(root_handlers: None) -> None:
    # as hivemind does when imported: its own handler, no propagation (configure_logging undoes it)
    hivemind_logger = logging.getLogger("hivemind")
    hivemind_logger.addHandler(logging.NullHandler())
    hivemind_logger.propagate = False
    hivemind_logger.setLevel(logging.INFO)
    stream = io.StringIO()
    context = PeerContext()
    configure_logging(context, stream=stream)
    logging.getLogger("peer.test").info("before join")
    context.peer_id = "p-0123456789abcdef"
    logging.getLogger("hivemind.dht").info("after %s", "join")  # hivemind renames WARNING to WARN
    before, after = stream.getvalue().splitlines()
    assert before.endswith(f"INFO [{UNKNOWN_PEER}] peer.test: before join")
    assert after.endswith("INFO [p-0123456789abcdef] hivemind.dht: after join")


def test_json_lines_are_one_object_each_with_the_traceback(root_handlers: None) -> None:
    stream = io.StringIO()
    configure_logging(PeerContext("p-1"), fmt="json", level=logging.DEBUG, stream=stream)
    logging.getLogger("peer.node").debug("round %d", 3)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("peer.node").exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{"))
    assert {k: first[k] for k in ("level", "peer_id", "logger", "message")} == {
        "level": "DEBUG", "peer_id": "p-1", "logger": "peer.node", "message": "round 3"}
    assert second["message"] == "failed" and "RuntimeError: boom" in second["exc_info"]


def test_configure_logging_replaces_root_handlers_and_rejects_unknown_formats(root_handlers: None) -> None:
    configure_logging(PeerContext(), stream=io.StringIO())
    configure_logging(PeerContext(), stream=io.StringIO())
    assert len(logging.getLogger().handlers) == 1
    with pytest.raises(ValueError, match="choose one of text, json"):
        configure_logging(PeerContext(), fmt="xml")

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Structured logging for a peer: every line carries the peer's id, as text or as JSON.

The peer id is only known after Join, so :class:`PeerContext` is a mutable holder that the formatters
read for every record (``record.peer_id``); until Join it shows ``-``. The formatter sits on the root
handler, so records of every logger that reach it carry the id (hivemind's too, once
:func:`adopt_library_loggers` has taken its own handler away), and it survives the progress bar's
redirection of console logging (which keeps the formatter).

Text lines look like ``2026-01-01 12:00:00,000 INFO [p-1a2b3c] peer.node: outer step 3 ...``; JSON lines
(``--log-format json``) are one object per line with ``time``, ``level``, ``peer_id``, ``logger``,
``message`` (and ``exc_info`` when there is a traceback), for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(peer_id)s] %(name)s: %(message)s"
# libraries that install a handler of their own at import (hivemind: coloured lines, no propagation)
LIBRARY_LOGGERS = ("hivemind",)
LOG_FORMATS = ("text", "json")
UNKNOWN_PEER = "-"


class PeerContext:
    """Who is logging: set :attr:`peer_id` once the coordinator has named the peer."""

    def __init__(self, peer_id: str = UNKNOWN_PEER) -> None:
        self.peer_id = peer_id or UNKNOWN_PEER


class PeerFormatter(logging.Formatter):
    """Text lines with the peer id (:data:`TEXT_FORMAT`)."""

    def __init__(self, context: PeerContext, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        record.peer_id = self.context.peer_id
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the peer id."""

    def __init__(self, context: PeerContext) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "peer_id": self.context.peer_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(context: PeerContext, *, level: int = logging.INFO, fmt: str = "text",
                      stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) with the peer id; returns the handler.

    Replaces the root logger's handlers (call it once, from the command line entry point)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(context) if fmt == "json" else PeerFormatter(context))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    adopt_library_loggers()
    return handler


def adopt_library_loggers(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Route the named libraries' records through the root handler (so they carry the peer id too).

    hivemind installs its own handler when it is first imported; call this again after that import and
    before it starts its DHT process, which then inherits the routing. Levels are left as they are."""
    for name in names:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True

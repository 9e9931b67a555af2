# SPDX-License-Identifier: AGPL-3.0-or-later
"""A machine-readable diary of the peer: one JSON object per line in ``WORKDIR/outer-steps.jsonl``.

Tests, benchmarks (``python -m bench.network``) and people read it to follow a peer without parsing its log.
Every line has ``event`` (what happened), ``t`` (unix time, seconds) and ``peer_id`` (the coordinator's
id of this peer, empty before Join). The events and their fields:

- ``state``: the peer holds the global parameters of ``outer_step`` (``params_sha256``) without averaging
  them itself; ``source`` says where they came from: ``init`` (the seeded θ₀), ``checkpoint``,
  ``download`` (joined a run in progress) or ``resync`` (the network moved on without this peer).
- ``state_sync``: a state download took ``seconds`` and ``bytes`` from ``donor``.
- ``first_step``: ``seconds`` from the start of ``lila-peer join`` to the end of the first inner step.
- ``round_start`` / ``group``: averaging round ``round`` began / its group was fixed (``members``:
  libp2p peer ids); a process killed between ``group`` and ``round`` died in the middle of the round.
- ``round``: how round ``round`` ended (``status``: ok, alone, partial, failed, sat_out; ``seconds``,
  ``matchmaking_s``, ``allreduce_s``, ``group_size``, ``bytes_sent``, ``bytes_received``, ``fp32_bytes``:
  what the same round would have sent uncompressed, ``peer.averaging.stats.fp32_round_bytes``).
- ``outer_step``: the peer applied outer step ``outer_step`` through averaging: ``params_sha256`` of
  the new global parameters, ``val_bpb`` (when evaluated), ``group_size``, ``status``, ``tokens``
  trained in the inner period, ``loss``, ``period_s`` (the inner period's seconds) and ``step_s`` (of
  them, inside optimizer steps), ``phases`` (seconds spent after the averaging itself:
  ``verify``, ``publish``, ``report``, ``evaluate``, ``telemetry``, ``checkpoint``).
- ``leave``: the peer stopped (``reason``); ``released`` lists the leases given back with their
  resume positions; ``tokens_trained`` counts the tokens of every batch it trained and committed,
  ``tokens_lost`` those of them on leases the coordinator took back before they were reported.

All peers that logged ``params_sha256`` for the same ``outer_step`` must agree: that is the network's
central invariant, and the integration tests check it from these files.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EVENTS_FILE = "outer-steps.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Appends events to ``path`` (created with its folder). Thread-safe; each line is flushed at once,
    so a peer killed with SIGKILL leaves every event it wrote before dying."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.peer_id = ""
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event; returns the record written."""
        record = {"event": event, "t": round(time.time(), 3), "peer_id": self.peer_id, **_clean(fields)}
        line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            self._file.close()


class PhaseTimer:
    """Seconds spent in named phases (accumulated when a phase repeats), for one diary record."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def rounded(self, digits: int = 4) -> dict[str, float]:
        return {name: round(value, digits) for name, value in self.seconds.items()}


def read_events(path: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """The records of an events file (only those of kind ``event`` when given). A torn last line (the
    writer was killed mid-write) is skipped; a missing file reads as no events."""
    return list(iter_events(path, event))


def iter_events(path: str | Path, event: str | None = None) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (event is None or record.get("event") == event):
            yield record

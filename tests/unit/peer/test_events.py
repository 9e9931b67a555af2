# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's events file (outer-steps.jsonl): one JSON object per line, readable while being written."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from peer.events import EVENTS_FILE, EventLog, PhaseTimer, read_events

THREADS = 4
LINES_PER_THREAD = 200


def test_events_carry_kind_time_and_peer_id_and_nan_becomes_null(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "w" / EVENTS_FILE)
    log.write("state", outer_step=0, params_sha256="ab" * 32, val_bpb=float("nan"))
    log.peer_id = "p-1"
    log.write("outer_step", outer_step=1, val_bpb=2.5, members=("a", "b"), extra={"x": float("inf")})
    log.close()
    log.write("after_close", outer_step=9)  # ignored, never raises
    first, second = read_events(tmp_path / "w" / EVENTS_FILE)
    assert first["event"] == "state" and first["peer_id"] == "" and first["val_bpb"] is None
    assert first["outer_step"] == 0 and isinstance(first["t"], float)
    assert second == {"event": "outer_step", "t": second["t"], "peer_id": "p-1", "outer_step": 1, "val_bpb": 2.5,
                      "members": ["a", "b"], "extra": {"x": None}}
    assert [r["outer_step"] for r in read_events(tmp_path / "w" / EVENTS_FILE, "outer_step")] == [1]


def test_a_torn_last_line_and_a_missing_file_read_as_fewer_events(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    assert read_events(path) == []
    path.write_text(json.dumps({"event": "state", "outer_step": 3}) + "\n" + '{"event": "outer_st')
    assert read_events(path) == [{"event": "state", "outer_step": 3}]


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    log = EventLog(tmp_path / EVENTS_FILE)

    def writer(index: int) -> None:
        for line in range(LINES_PER_THREAD):
            log.write("group", thread=index, line=line, members=["x" * 50] * 5)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    raw = (tmp_path / EVENTS_FILE).read_text().splitlines()
    assert len(raw) == THREADS * LINES_PER_THREAD
    records = [json.loads(line) for line in raw]
    for index in range(THREADS):
        assert [r["line"] for r in records if r["thread"] == index] == list(range(LINES_PER_THREAD))


def test_phase_timer_accumulates_repeated_phases() -> None:
    timer = PhaseTimer()
    with timer.phase("report"):
        time.sleep(0.01)
    with timer.phase("checkpoint"):
        pass
    with timer.phase("report"):
        time.sleep(0.01)
    assert list(timer.seconds) == ["report", "checkpoint"]
    assert timer.seconds["report"] >= 0.02 and timer.seconds["checkpoint"] < timer.seconds["report"]
    assert timer.rounded(2)["report"] == round(timer.seconds["report"], 2)

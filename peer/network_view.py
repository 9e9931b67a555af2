# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's view of the run's outer step: the one source of the network's step a peer trusts.

DHT records are written by every admitted peer, so one peer with a valid credential can announce any
outer step there. The coordinator instead moves its ``current_outer_step`` only when a quorum of peers
reached a step, and tells (``outer_step_sha256``) the parameter hash most peers, counted once per join
token, reported for it. :class:`NetworkView` holds the last (step, sha256) it said — from the Join answer,
then from every heartbeat answer — for the round barrier (:mod:`peer.round_sync`: donors claiming a step
beyond ``step + 1`` are ignored) and the state download (:mod:`peer.sync`: a downloaded state of step S is
loaded only when its bytes hash to the majority's hash of S, which the coordinator names for its recent
steps, so a download that finishes after the run moved on is still checked).

Tuning: how fresh the view is follows the coordinator's ``heartbeat_interval_s``; the ``+ 1`` margin
lets peers see a round the others just finished before the coordinator counted it.
"""

from __future__ import annotations

import threading
from typing import Any

from lila_net.dht.records import HASH_PATTERN

KEEP_STEPS = 16  # recent steps' hashes kept (the coordinator sends the ones it keeps, about 8)


class NetworkView:
    """Thread-safe (step, sha256) as the coordinator last said, and the hashes it vouches for of recent
    steps; ``step`` -1 and ``sha256`` "" while unknown."""

    def __init__(self, *, step: int = -1, sha256: str = "") -> None:
        self._lock = threading.Lock()
        self._step = -1
        self._sha256 = ""
        self._recent: dict[int, str] = {}  # outer step -> the majority's hash (the newest KEEP_STEPS)
        self.taking_part = 0  # live sessions the coordinator counts taking part in rounds (0: not said)
        self.growth_steps: tuple[int, ...] = ()  # outer steps of the announced model growths (peer.growth)
        self.update(step=step, sha256=sha256)

    @property
    def step(self) -> int:
        with self._lock:
            return self._step

    @property
    def known(self) -> bool:
        """True once the coordinator said a step (a view without one bounds nothing)."""
        return self.step >= 0

    def get(self) -> tuple[int, str]:
        """``(step, sha256)`` read together."""
        with self._lock:
            return self._step, self._sha256

    def hash_of(self, step: int) -> str:
        """The coordinator's majority hash of ``step`` ("" when it named none for that step)."""
        with self._lock:
            if step == self._step and self._sha256:
                return self._sha256
            return self._recent.get(step, "")

    def update(self, *, step: int, sha256: str = "", recent: dict[int, str] | None = None) -> None:
        """Take the coordinator's answer. The step never goes down (the coordinator's never does; an older
        answer arriving late must not undo a newer one). A malformed hash is dropped (treated as none)."""
        step = int(step)
        sha256 = sha256 if _is_hash(sha256) else ""
        with self._lock:
            if step > self._step:
                self._step, self._sha256 = step, sha256
            elif step == self._step and sha256:
                self._sha256 = sha256
            for past, value in (recent or {}).items():
                if _is_hash(value) and int(past) <= self._step:
                    self._recent[int(past)] = value
            for old in sorted(self._recent)[:-KEEP_STEPS]:
                del self._recent[old]

    def on_reply(self, response: Any) -> None:
        """Feed a ``HeartbeatResponse`` or ``JoinResponse`` (``current_outer_step``, ``outer_step_sha256``,
        ``recent_step_hashes``, ``peers_taking_part``, ``growth_outer_steps``)."""
        if response is not None:
            recent = {item.outer_step: item.sha256 for item in getattr(response, "recent_step_hashes", ())}
            self.update(step=response.current_outer_step, sha256=getattr(response, "outer_step_sha256", ""),
                        recent=recent)
            if hasattr(response, "peers_taking_part"):  # heartbeats say it; a Join answer does not
                self.taking_part = max(0, int(response.peers_taking_part))
            growths = tuple(int(step) for step in getattr(response, "growth_outer_steps", ()))
            if len(growths) >= len(self.growth_steps):  # announcements are never taken back
                self.growth_steps = growths


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and bool(HASH_PATTERN.match(value.encode()))

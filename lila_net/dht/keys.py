# SPDX-License-Identifier: AGPL-3.0-or-later
"""Names of the DHT keys and stream protocols one run uses: one place, so the record validator
(:mod:`lila_net.dht.records`) schema-checks exactly these keys and every writer uses the same names.

Keys (``{run}`` is checked by :func:`check_run_id`):

- ``lila/{run}/avg/{round}/peers``: subkey = peer id, value = JSON announcement of a peer in round ``round``.
- ``lila/{run}/verify/{round}``: subkey = peer id, value = hex sha256 of its global parameters after the round.
- ``lila/{run}/state``: subkey = peer id, value = JSON ``{"outer_step": int}`` of a state donor.
- ``lila/{run}/ready/{round}``: subkey = peer id, value ``{"v": 1}``: "I reached round ``round``"
  (``{"v": 1, "go": true}``: "and I stopped waiting").
- ``lila/{run}/absent``: subkey = peer id, value ``{"why": "idle" | "left"}``: "do not wait for me".
"""

from __future__ import annotations

import re

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe name for DHT keys and protocol names, else raise ValueError."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            f"run id {run_id!r} is not usable: use 1-64 characters from letters, digits, '_', '.', '-'"
        )
    return run_id


def run_dht_id(run_name: str) -> str:
    """The id a run's DHT keys and protocols use: its name with dots as dashes (checked)."""
    return check_run_id(run_name.replace(".", "-"))


def _check_round(round_index: int) -> int:
    if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
        raise ValueError(f"round index must be an int >= 0, got {round_index!r}")
    return round_index


def announce_key(run_id: str, round_index: int) -> str:
    return f"lila/{check_run_id(run_id)}/avg/{_check_round(round_index)}/peers"


def verify_key(run_id: str, round_index: int) -> str:
    return f"lila/{check_run_id(run_id)}/verify/{_check_round(round_index)}"


def state_key(run_id: str) -> str:
    return f"lila/{check_run_id(run_id)}/state"


def ready_key(run_id: str, round_index: int) -> str:
    return f"lila/{check_run_id(run_id)}/ready/{_check_round(round_index)}"


def absent_key(run_id: str) -> str:
    return f"lila/{check_run_id(run_id)}/absent"


def protocol(run_id: str, name: str) -> str:
    """Stream protocol name of ``name`` ("join", "part" or "state") for this run."""
    return f"lila.{check_run_id(run_id)}.{name}"

# SPDX-License-Identifier: AGPL-3.0-or-later
"""How a peer's run ends early, and the exit status each way gives ``lila-peer join``."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 3  # the run's model does not fit this device (the memory planner's message says why)
EXIT_TRANSPORT_DIED = 4  # the DHT or p2p daemon died; restarting resumes from the checkpoint
EXIT_BANNED = 5  # the coordinator banned this peer (its contributions were rejected too often)


class PlanRefused(RuntimeError):
    """The run's preset does not fit this device; the message is the memory planner's."""


class Stopped(Exception):
    """The stop flag was set while waiting for the network."""


class TransportDied(RuntimeError):
    """The peer's DHT or p2p daemon is gone (e.g. killed by the OS): the peer cannot average any more."""


class Banned(RuntimeError):
    """The coordinator refused this peer (banned after too many strikes)."""

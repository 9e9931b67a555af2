# SPDX-License-Identifier: AGPL-3.0-or-later
"""How a peer's run ends early, and the exit status each way gives ``lila-peer join``."""

from __future__ import annotations

from lila_net.exits import ExitStatus

# The statuses are the three commands' shared table (lila_net.exits.ExitStatus, README "Exit statuses").
EXIT_OK = ExitStatus.OK
EXIT_DOES_NOT_FIT = ExitStatus.DOES_NOT_FIT  # the run's model does not fit this device (the planner says why)
EXIT_TRANSPORT_DIED = ExitStatus.TRANSPORT_DIED  # the DHT or p2p daemon died; restarting resumes from the checkpoint
EXIT_BANNED = ExitStatus.BANNED  # the coordinator banned this peer (its contributions were rejected too often)


class PlanRefused(RuntimeError):
    """The run's preset does not fit this device; the message is the memory planner's."""


class Stopped(Exception):
    """The stop flag was set while waiting for the network."""


class TransportDied(RuntimeError):
    """The peer's DHT or p2p daemon is gone (e.g. killed by the OS): the peer cannot average any more."""


class Banned(RuntimeError):
    """The coordinator refused this peer (banned after too many strikes)."""

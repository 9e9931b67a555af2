# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a peer says it is doing in its heartbeats (``HeartbeatRequest.phase``), where both sides read it.

The coordinator shows the phase on the status page and does not count an ``idle`` peer (no data for
now, or the run's data is done) among those taking part in a round when it decides whether the run's
outer step may advance (:mod:`coordinator.core`)."""

JOINING = "joining"
TRAINING = "training"
AVERAGING = "averaging"
SYNCING = "syncing"
IDLE = "idle"

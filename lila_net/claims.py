# SPDX-License-Identifier: AGPL-3.0-or-later
"""When announcing an outer step is a false claim (the rule peers and the coordinator share).

A peer announces the outer step of the state it serves in a DHT record it signs
(:mod:`lila_net.dht.evidence`). An honest peer never announces more than :data:`MAX_ANNOUNCE_AHEAD` steps
beyond the coordinator's step it last heard (``peer.after_round.publish`` holds back; peers in step are
at most one round ahead of the coordinator, and a peer that averaged alone is refused two steps ahead and
re-syncs), and the coordinator's step never goes down. So a signed announcement more than :data:`FALSE_CLAIM_MARGIN` beyond the coordinator's current step
is a false claim — the state hijack, a donor claiming step 10¹⁵ so that everyone chases its state — and
bans its writer on one report.

Tuning: a larger margin only leaves smaller false claims unpunished (every peer ignores a claim more than
one step beyond the coordinator's anyway, ``peer.round_sync``); a margin below ``MAX_ANNOUNCE_AHEAD``
would ban honest peers. ``tests/unit/coordinator/test_attacks.py`` checks both sides of the margin.
"""

from __future__ import annotations

MAX_ANNOUNCE_AHEAD = 3
FALSE_CLAIM_MARGIN = 6


def is_false_claim(claimed_step: int, run_step: int) -> bool:
    """True when announcing ``claimed_step`` while the coordinator is at ``run_step`` is a false claim."""
    return claimed_step > run_step + FALSE_CLAIM_MARGIN

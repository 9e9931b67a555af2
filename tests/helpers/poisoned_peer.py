# SPDX-License-Identifier: AGPL-3.0-or-later
"""An attacker for the trust tests: ``lila-peer join`` whose pseudo-gradients are scaled by ``LILA_TEST_POISON_SCALE``
(default 100) before they are averaged. Everything else — joining, credentials, the DHT, leases — is the real peer.

    python -m tests.helpers.poisoned_peer join 127.0.0.1:PORT --name attacker ...
"""

from __future__ import annotations

import os
import sys

import torch

from peer import rounds
from peer.averaging.averager import RoundResult
from peer.cli import main
from peer.parts import Peer

SCALE = float(os.environ.get("LILA_TEST_POISON_SCALE", "100"))
honest_average = rounds.average


def poisoned_average(peer: Peer, round_index: int, vector: torch.Tensor, **kwargs) -> RoundResult:
    return honest_average(peer, round_index, vector * SCALE, **kwargs)


if __name__ == "__main__":
    rounds.average = poisoned_average  # rounds.outer_round calls the module's average at each round
    sys.exit(main())

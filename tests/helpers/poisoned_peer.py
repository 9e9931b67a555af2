# SPDX-License-Identifier: AGPL-3.0-or-later
"""An attacker for the trust tests: ``lila-peer join`` whose pseudo-gradients are scaled by ``LILA_TEST_POISON_SCALE``
(default 100) before they are averaged. Everything else — joining, credentials, the DHT, leases — is the real peer.

    python -m tests.helpers.poisoned_peer join 127.0.0.1:PORT --name attacker ...
"""

from __future__ import annotations

import os
import sys

import torch

import peer.node
from peer.averaging.averager import RoundResult
from peer.cli import main

SCALE = float(os.environ.get("LILA_TEST_POISON_SCALE", "100"))


class PoisonedNode(peer.node.PeerNode):
    def _average(self, round_index: int, vector: torch.Tensor, **kwargs) -> RoundResult:
        return super()._average(round_index, vector * SCALE, **kwargs)


if __name__ == "__main__":
    peer.node.PeerNode = PoisonedNode  # peer.cli imports PeerNode from peer.node when `join` runs
    sys.exit(main())

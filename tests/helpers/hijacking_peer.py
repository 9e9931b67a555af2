# SPDX-License-Identifier: AGPL-3.0-or-later
"""An attacker for the trust tests: ``lila-peer join`` that announces every state it serves as outer step
``LILA_TEST_CLAIM_STEP`` (default 10**15) in the DHT, so that peers believing the DHT would drop their work
and download its state. Everything else — joining, credentials, the signed DHT records — is the real peer.

    python -m tests.helpers.hijacking_peer join 127.0.0.1:PORT --name attacker ...
"""

from __future__ import annotations

import dataclasses
import os
import sys

from peer.averaging.state_format import StateSnapshot
from peer.averaging.state_sync import StateSync
from peer.cli import main

CLAIM_STEP = int(os.environ.get("LILA_TEST_CLAIM_STEP", str(10**15)))
honest_publish = StateSync.publish


def hijacking_publish(self: StateSync, snapshot: StateSnapshot) -> None:
    honest_publish(self, dataclasses.replace(snapshot, metadata={**snapshot.metadata, "outer_step": CLAIM_STEP}))


if __name__ == "__main__":
    StateSync.publish = hijacking_publish  # every announcement of this peer claims CLAIM_STEP
    sys.exit(main())

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The round barrier (peer.round_sync) on three real DHT nodes in this process: who is expected at a
round, how long a missing peer is waited for, absent peers, and a network that moved on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from peer.averaging import StateSnapshot, StateSync, StateSyncConfig, StaticTokenAuthorizer
from peer.round_sync import BarrierResult, RoundSync
from tests.helpers.transports import local_transports

RUN_ID = "barrier-test"
KEY = b"barrier-key"
STRAGGLER_WAIT_S = 2.0
FAST_S = 1.5  # an answer that did not wait for the straggler timeout

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def peers() -> Iterator[list[RoundSync]]:
    syncs: list[StateSync] = []
    with local_transports(3) as transports:
        try:
            out = []
            for transport in sorted(transports, key=lambda t: t.peer_id):
                sync = StateSync(transport, run_id=RUN_ID, credential=KEY, authorize=StaticTokenAuthorizer([KEY]),
                                 config=StateSyncConfig(announce_period=30.0))
                syncs.append(sync)
                out.append(RoundSync(transport, sync, run_id=RUN_ID, straggler_wait_s=STRAGGLER_WAIT_S))
            yield out
        finally:
            for sync in syncs:
                sync.shutdown()


def publish(sync: RoundSync, step: int) -> None:
    sync.state_sync.publish(StateSnapshot(tensors={"w": torch.zeros(4)}, metadata={"outer_step": step}))


def wait_in_thread(sync: RoundSync, round_index: int) -> tuple[threading.Thread, list[BarrierResult]]:
    out: list[BarrierResult] = []
    thread = threading.Thread(target=lambda: out.append(sync.wait_for_peers(round_index)))
    thread.start()
    return thread, out


def test_barrier_waits_for_expected_peers_skips_absent_ones_and_sees_the_network_move_on(
        peers: list[RoundSync]) -> None:
    a, b, c = peers
    for sync in peers:
        publish(sync, 0)
    assert {d.peer_id for d in a.donors()} == {b.me, c.me} and a.network_step() == 0

    # Round 1: everyone arrives (b and c a moment after a): a leaves as soon as the last one posted.
    thread, out = wait_in_thread(a, 1)
    time.sleep(0.3)
    b.post_ready(1)
    c.post_ready(1)
    thread.join()
    (result,) = out
    assert result.moved_on is None and result.missing == () and set(result.expected) == {b.me, c.me}
    assert result.waited_s < FAST_S

    # Round 2: c never comes: a waits the straggler timeout, then names it.
    b.post_ready(2)
    result = a.wait_for_peers(2)
    assert result.missing == (c.me,) and STRAGGLER_WAIT_S <= result.waited_s < STRAGGLER_WAIT_S + FAST_S
    # a stopped waiting and said so: b, reaching round 2 now (its first round, and the coordinator counts
    # three peers taking part, so b alone would wait the whole straggler time), follows it at once
    assert b.ready(2) == {a.me: True, b.me: False}
    b.view.taking_part = 3
    result = b.wait_for_peers(2)
    assert result.missing == (c.me,) and result.waited_s < FAST_S
    assert a.ready(2) == {a.me: True, b.me: True}

    # Round 3: c said it is idle (no data for now): nobody waits for it.
    c.post_absent("idle")
    assert c.me in a.absent()
    b.post_ready(3)
    result = a.wait_for_peers(3)
    assert result.missing == () and c.me not in result.expected and result.waited_s < FAST_S

    # Who a must not leave yet: b works (no absence), c is idle (and may be behind), and one that left is gone.
    working, idle = a.staying()
    assert [d.peer_id for d in working] == [b.me] and [(d.peer_id, d.outer_step) for d in idle] == [(c.me, 0)]
    b.post_absent("left")
    assert a.absences() == {b.me: "left", c.me: "idle"}
    assert a.staying() == ([], idle) and a.working() == []

    # b applied outer step 5 already: a's round 4 is over, a must download the state instead.
    publish(b, 5)
    result = a.wait_for_peers(4)
    assert result.moved_on == 5 and result.waited_s < FAST_S
    assert a.network_step() == 5

    with pytest.raises(ValueError, match="absence 'gone'"):
        a.post_absent("gone")
    with pytest.raises(ValueError, match="straggler_wait_s=-1"):
        RoundSync(a.transport, a.state_sync, run_id=RUN_ID, straggler_wait_s=-1)

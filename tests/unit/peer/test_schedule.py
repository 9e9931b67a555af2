# SPDX-License-Identifier: AGPL-3.0-or-later
"""Where a peer is on the run's lr schedule during its inner period (peer.inner.schedule_position)."""

from __future__ import annotations

import pytest

from lila_data import curriculum_at
from lila_net.config import load_run_config
from peer.inner import schedule_position
from tests.helpers.paths import REPO

BATCH_TOKENS = 4 * 128  # bench-quick: batch 4 × seq 128


@pytest.mark.parametrize(("peers", "inner_steps"), [(1, 400), (2, 200), (4, 100)])
def test_a_peer_follows_the_schedule_of_synchronous_training_with_the_global_batch(peers: int,
                                                                                   inner_steps: int) -> None:
    curriculum = load_run_config(REPO / "runs" / "bench-quick.toml").curriculum
    schedule = curriculum.schedule
    per_period = peers * inner_steps * BATCH_TOKENS  # the run's tokens per outer step
    last_start = curriculum.total_tokens - per_period
    for step in range(inner_steps):
        # synchronous data parallel with batch peers × B: step s ends at (s + 1) × peers × B tokens
        synchronous = last_start + (step + 1) * peers * BATCH_TOKENS
        assert schedule_position(last_start, (step + 1) * BATCH_TOKENS, peers) == synchronous
    end = curriculum_at(curriculum, schedule_position(last_start, inner_steps * BATCH_TOKENS, peers))
    assert end.lr == pytest.approx(schedule.peak_lr * schedule.min_lr_ratio)  # the decay ends where it should
    # the first period: warm-up is over after warmup_tokens of the run, not of each peer
    own = schedule.warmup_tokens // peers
    assert curriculum_at(curriculum, schedule_position(0, own, peers)).lr == pytest.approx(schedule.peak_lr)


@pytest.mark.parametrize(("global_tokens", "own", "peers"), [(0, 0, 0), (-1, 0, 2), (0, -5, 2)])
def test_bad_counts_are_refused(global_tokens: int, own: int, peers: int) -> None:
    with pytest.raises(ValueError, match="peers="):
        schedule_position(global_tokens, own, peers)

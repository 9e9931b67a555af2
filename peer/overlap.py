# SPDX-License-Identifier: AGPL-3.0-or-later
"""Communication behind compute: the next inner period trains while the round's averaging runs.

With ``diloco.overlap`` the outer update is applied one period late (the one-step-delayed outer step of
overlapping DiLoCo variants, with "eager" local parameters). After period p the peer takes its
pseudo-gradient Δ = θ_global − θ_local, starts round r (round barrier, then averaging) on a background
thread, and at once trains period p+1 from where it is — until round r has ended, if that takes longer
than the period (``peer.rounds.train_period``'s ``waiting``). Then it applies the outer step to θ_global — the same averaged bytes on every
member, so the parameter hash check holds — and keeps its progress of period p+1 on top:
``θ_local ← θ_global − (θ_local at the start of p+1 − θ_local now)``. The next round then sends
Δ = θ_global − θ_local, exactly that progress. A round that was not applied (sat out, failed) rebases
nothing, and the next Δ carries both periods' progress, as with blocking rounds; a round that finds the
network moved on re-syncs, dropping the local progress.

Cost: each outer step is computed from progress one period older than the parameters it lands on, and a
peer holds one extra copy of its parameters (the start of the period). When a round takes longer than
a period, the peer waits for it at the end of the next period: it never runs two rounds at once.
``python -m bench.volunteers`` measures utilization and quality against blocking rounds.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass

import torch

from .after_round import after_round
from .averaging.averager import STATUS_FAILED, RoundResult
from .outer import flatten_parameters
from .parts import Peer, Period
from .round_sync import BarrierResult
from .rounds import apply_round, average, round_vector
from .sync import CALL_SLACK_S, resync, wait_future

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InFlight:
    """A round averaging in the background: its index, the period it carries, what this peer sent, the
    local parameters when the next period started ([numel]) and the background job."""

    round_index: int
    period: Period
    vector: torch.Tensor
    start: torch.Tensor
    job: concurrent.futures.Future  # -> (BarrierResult, RoundResult | None, seconds)


class Overlap:
    """At most one round in flight for one peer (see the module docstring); :meth:`close` when done."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="round")
        self.inflight: InFlight | None = None

    def launch(self, peer: Peer, period: Period) -> None:
        """Start the round of ``period`` (the next outer step) in the background; return at once."""
        if self.inflight is not None:
            raise RuntimeError("a round is already in flight: land() it first")
        round_index = peer.progress.outer_step + 1
        peer.progress.group_formed = None  # the next period's deadline counts from this round's group
        vector = round_vector(peer, round_index)
        start = flatten_parameters(peer.training.model).clone()  # [numel]
        job = self._pool.submit(_barrier_and_average, peer, round_index, vector, period)
        self.inflight = InFlight(round_index, period, vector, start, job)

    def busy(self) -> bool:
        """True while a round is in flight and has not ended (the period trains on meanwhile)."""
        inflight = self.inflight
        return inflight is not None and not inflight.job.done()

    def land(self, peer: Peer) -> RoundResult | None:
        """Wait for the round in flight and apply it, keeping the progress made since it started; the
        result when it was applied, else None."""
        inflight, self.inflight = self.inflight, None
        if inflight is None:
            return None
        try:
            barrier, result, seconds = wait_future(inflight.job, peer.network.averager.round_timeout
                                                   + peer.network.round_sync.straggler_wait_s + CALL_SLACK_S,
                                                   stop=peer.stop)
        except concurrent.futures.TimeoutError:
            barrier, result, seconds = (BarrierResult(inflight.round_index, 0.0, known=False),
                                        RoundResult(inflight.round_index, STATUS_FAILED,
                                                    "the round did not end in time", None, None), 0.0)
        if result is None:
            assert barrier.moved_on is not None
            resync(peer, barrier.moved_on, f"round {inflight.round_index} finished while waiting",
                   discarded_tokens=inflight.period.tokens)
            return None
        keep = inflight.start - flatten_parameters(peer.training.model)  # [numel] progress since the launch
        applied = apply_round(peer, inflight.round_index, inflight.vector, result, seconds,
                              expected=barrier.arrived, keep=keep)
        if applied is not None:
            after_round(peer, inflight.period, applied)
        return applied

    def close(self) -> None:
        """Stop without waiting for a round in flight (it ends on its own: it watches the stop flag)."""
        self.inflight = None
        self._pool.shutdown(wait=False, cancel_futures=True)


def _barrier_and_average(peer: Peer, round_index: int, vector: torch.Tensor, period: Period,
                         ) -> tuple[BarrierResult, RoundResult | None, float]:
    """The background half of a round: wait for the others at the barrier, then average (None when the
    network moved on without this peer)."""
    try:
        barrier = peer.network.round_sync.wait_for_peers(round_index, stop=peer.stop)
    except Exception as exc:  # the DHT misbehaving must not stop training: average without waiting
        logger.warning("round %d: could not wait for the other peers: %s", round_index, exc)
        barrier = BarrierResult(round_index, 0.0, known=False)
    if barrier.moved_on is not None or peer.stop.is_set():
        return barrier, None if barrier.moved_on is not None else RoundResult(
            round_index, STATUS_FAILED, "stopping", None, None), 0.0
    started = time.perf_counter()
    result = average(peer, round_index, vector, expected=barrier.arrived, weight=max(period.tokens, 1))
    return barrier, result, time.perf_counter() - started

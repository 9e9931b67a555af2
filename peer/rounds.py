# SPDX-License-Identifier: AGPL-3.0-or-later
"""Phase 3 of a peer: one inner period, then one averaging round.

:func:`train_period` runs up to H inner AdamW steps on leased data at the run's place on the learning-rate
schedule. :func:`outer_round` takes Δ = θ_global − θ_local plus the error-feedback residual, averages it
with the peers of the same outer step (lattice codec, robust aggregation at the part owners), applies the
outer Nesterov step to θ_global and checks through the DHT that the group holds the same parameters
(re-downloading them when this peer does not). A failed round is never applied silently: the peer keeps
training from its local parameters, so the next round's Δ covers both periods.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable

import psutil
import torch

from lila_data import curriculum_at
from lila_net import phases

from .averaging.averager import STATUS_FAILED, RoundResult
from .averaging.config import AveragingConfig
from .averaging.matchmaking import Group
from .averaging.stats import fp32_round_bytes
from .events import PhaseTimer
from .growth import grow_after_round
from .inner import schedule_position
from .link import exchange_timeout
from .outer import flatten_parameters, load_flat_parameters
from .parts import Peer, Period
from .recording import maybe_record
from .sync import CALL_SLACK_S, resync, wait_future

logger = logging.getLogger(__name__)


def global_progress(peer: Peer) -> tuple[int, int]:
    """Tokens trained by the whole run and the number of active peers (for the learning-rate
    schedule); the last known values when the coordinator does not answer right away, so a hiccup
    never restarts the warm-up."""
    progress = peer.progress
    try:
        status = peer.client.status(retry=False)
        progress.global_tokens = int(status.global_tokens)
        progress.active_peers = max(1, int(status.peers_by_state.get("active", 1)))
    except Exception as exc:  # a status failure must not stop training
        logger.warning("could not read global progress (using %d tokens, %d peers): %s", progress.global_tokens,
                       progress.active_peers, exc)
    return progress.global_tokens, progress.active_peers


def period_deadline(period_s: float, anchor: float | None, now: float) -> float | None:
    """When (``time.monotonic``) a time-boxed inner period ends: ``period_s`` after ``anchor``, the moment
    the last round's group formed, which every member saw at about the same instant, so the group trains
    for the same wall time and meets again on time (no clock is shared: each peer counts from its own view
    of the group forming). Without an anchor (a start, a re-sync, an idle spell) the period counts from
    ``now``. A deadline already past (the round took longer than a period) still allows the one step a
    period always has. None when ``period_s`` is 0 (fixed ``inner_steps``)."""
    if period_s <= 0:
        return None
    return (now if anchor is None else anchor) + period_s


def train_period(peer: Peer, *, waiting: Callable[[], bool] | None = None) -> Period:
    """H inner steps, or with ``diloco.period_s`` every step that fits before :func:`period_deadline` (at
    least one); fewer when the data runs out or the peer is stopping. ``waiting`` (overlapped rounds):
    while it returns True — the round in flight has not ended — training goes on past the deadline or H,
    rather than idling until the round lands."""
    run, training, progress, metrics = peer.run, peer.training, peer.progress, peer.metrics
    peer.heartbeat.phase = phases.TRAINING
    deadline = period_deadline(run.diloco.period_s, progress.group_formed, time.monotonic())
    progress.group_formed = None  # consumed: a period after no round (idle, re-sync) counts from its start
    peer.bar.start_period(outer_step=progress.outer_step + 1, inner_steps=run.diloco.inner_steps)
    global_tokens, peers = global_progress(peer)
    tokens = 0
    losses = []
    step_seconds = 0.0
    started = time.perf_counter()
    on_time = deadline is not None and deadline > time.monotonic()  # False: rounds were missed, catch up
    for index in itertools.count():
        if peer.stop.is_set():
            break
        if deadline is not None and progress.group_formed is not None:  # overlapped: the round in flight
            deadline = period_deadline(run.diloco.period_s, progress.group_formed, 0.0)  # formed meanwhile
        due = index >= run.diloco.inner_steps if deadline is None else index > 0 and time.monotonic() >= deadline
        if due and not (waiting is not None and waiting()):
            break
        batch = training.feed.next_batch(wait=False)  # no shard free now: end the period, never block
        if batch is None:
            logger.info("inner period ends after %d steps: no data available now", index)
            break
        point = curriculum_at(run.curriculum, schedule_position(global_tokens, tokens, peers))
        training.trainer.set_lr(point.lr)
        stats = training.trainer.step(batch.inputs, batch.targets)
        seconds = stats.seconds + throttle(stats.seconds, peer.options.throttle, peer.stop)  # the emulated step
        if index == 0 and on_time and time.monotonic() > deadline:
            _tell_slow(peer, time.perf_counter() - started, run.diloco.period_s)
        training.feed.commit(batch)
        tokens += stats.tokens
        progress.tokens_trained += stats.tokens
        losses.append(stats.ce_loss)
        step_seconds += seconds
        tokens_per_s = stats.tokens / max(seconds, 1e-9)
        metrics.tokens_total.inc(stats.tokens)
        metrics.loss.set(stats.ce_loss)
        metrics.geo_loss.set(stats.geo_loss)
        metrics.learning_rate.set(point.lr)
        metrics.tokens_per_second.set(tokens_per_s)
        peer.bar.inner_step(loss=stats.ce_loss, tokens_per_s=tokens_per_s)
        if not progress.first_step_done:
            progress.first_step_done = True
            _first_step(peer)
    training.feed.flush()  # the run's token count is current before the round (and the next period's schedule)
    loss = sum(losses) / len(losses) if losses else 0.0
    return Period(tokens=tokens, seconds=time.perf_counter() - started, loss=loss, step_seconds=step_seconds)


def throttle(step_seconds: float, fraction: float, stop: threading.Event) -> float:
    """Run at ``fraction`` of this machine's speed (``lila-peer join --throttle``, for tests and
    benchmarks of peers of different speeds): sleep ``(1 / fraction - 1)`` times the step just taken, and
    return the seconds slept (they count as the emulated device's step time)."""
    if fraction >= 1.0:
        return 0.0
    pause = step_seconds * (1.0 / fraction - 1.0)
    stop.wait(pause)
    return pause


def _tell_slow(peer: Peer, seconds: float, period_s: float) -> None:
    """Say once that one inner step does not fit the run's period, and what to do about it."""
    if peer.progress.told_slow:
        return
    peer.progress.told_slow = True
    logger.warning("one inner step took %.1f s, longer than the run's period of %.1f s (diloco.period_s): "
                   "this peer arrives late at every round and the others wait for it. Run it on a faster "
                   "device (--device) or with fewer threads busy elsewhere; the run's organizer can raise "
                   "diloco.period_s or lower diloco.batch_size", seconds, period_s)


def _first_step(peer: Peer) -> None:
    seconds = time.monotonic() - peer.progress.started
    process_seconds = time.time() - psutil.Process().create_time()
    peer.events.write("first_step", seconds=seconds, process_seconds=process_seconds)
    logger.info("first training step done %.1f s after joining (%.1f s after the process started)",
                seconds, process_seconds)


def _on_group(peer: Peer):
    def on_group(group: Group) -> None:  # runs on the transport loop: keep it short
        peer.progress.group_formed = time.monotonic()  # time-boxed periods count from here
        peer.events.write("group", round=group.round_index, members=list(group.members), leader=group.leader)

    return on_group


def average(peer: Peer, round_index: int, vector: torch.Tensor, *,
            expected: frozenset[str] | None = None, weight: float = 1.0) -> RoundResult:
    """One averaging round; ``expected``: the peers the round barrier saw arrive (None: unknown);
    ``weight``: the tokens this peer trained in the period (its contribution counts that much)."""
    averager = peer.network.averager
    base = AveragingConfig.for_run(peer.run.diloco)
    exchange_s = exchange_timeout(base.part_timeout, peer.network.link)  # follows the measured link
    averager.config = dataclasses.replace(base, part_timeout=exchange_s, result_timeout=exchange_s)
    future = peer.network.transport.submit(averager.average_async(
        round_index, vector, codec=peer.training.codec, aggregator=peer.training.aggregator,
        on_group=_on_group(peer), want_reconstruction=True, expected_peers=expected, weight=weight))
    try:
        return wait_future(future, averager.round_timeout + CALL_SLACK_S, stop=peer.stop)
    except concurrent.futures.TimeoutError:
        return RoundResult(round_index, STATUS_FAILED, "the round did not end in time", None, None)


def _record_round(peer: Peer, result: RoundResult, seconds: float) -> None:
    metrics = peer.metrics
    metrics.round_seconds.observe(seconds)
    metrics.rounds_total.labels(outcome=result.status).inc()
    metrics.group_size.set(result.group_size)
    metrics.bytes_sent.inc(result.bytes_sent)
    metrics.bytes_received.inc(result.bytes_received)
    link = peer.network.link
    link.observe_round(sent=result.bytes_sent, received=result.bytes_received, seconds=result.allreduce_s)
    metrics.link_rate.labels(direction="up").set(link.uplink_bytes_per_s)
    metrics.link_rate.labels(direction="down").set(link.downlink_bytes_per_s)
    peer.bar.round_done(seconds=seconds, bytes_exchanged=result.bytes_sent + result.bytes_received,
                        group_size=result.group_size)


def outer_round(peer: Peer, round_index: int, period: Period, *,
                expected: frozenset[str] | None = None) -> RoundResult | None:
    """Average and apply outer step ``round_index`` (blocking); the result when it was applied, else None."""
    peer.heartbeat.phase = phases.AVERAGING
    vector, result, seconds = exchange(peer, round_index, period, expected=expected)
    return apply_round(peer, round_index, vector, result, seconds, expected=expected)


def exchange(peer: Peer, round_index: int, period: Period, *,
             expected: frozenset[str] | None = None) -> tuple[torch.Tensor, RoundResult, float]:
    """The averaging of round ``round_index``: this peer's pseudo-gradient (θ_global − θ_local, plus what
    earlier rounds' codec dropped), the round's result and how long it took."""
    vector = round_vector(peer, round_index)
    started = time.perf_counter()
    result = average(peer, round_index, vector, expected=expected, weight=max(period.tokens, 1))
    return vector, result, time.perf_counter() - started


def round_vector(peer: Peer, round_index: int) -> torch.Tensor:
    """What this peer sends in round ``round_index``: θ_global − θ_local, plus what earlier rounds' codec
    dropped (error feedback). [numel] float32, a new tensor."""
    peer.events.write("round_start", round=round_index)
    delta = peer.training.outer.pseudo_gradient(flatten_parameters(peer.training.model))  # [numel]
    vector = delta + peer.progress.residual
    maybe_record(peer, round_index, vector)
    return vector


def apply_round(peer: Peer, round_index: int, vector: torch.Tensor, result: RoundResult, seconds: float, *,
                expected: frozenset[str] | None = None, keep: torch.Tensor | None = None) -> RoundResult | None:
    """Apply the averaged round: the outer step, the model's new parameters, the hash check. ``keep``
    ([numel], overlapped rounds): this peer's progress since the pseudo-gradient was taken, kept on top of
    the new global parameters (``θ_local = θ_global − keep``). The result when applied, else None (the
    local parameters are then left as they are)."""
    training, progress, min_group = peer.training, peer.progress, peer.run.diloco.min_group_size
    progress.phases = PhaseTimer()  # what follows the averaging itself, written with the outer step
    peer.network.trust.report_round(result)  # rejections in this peer's part -> ReportStrike
    _record_round(peer, result, seconds)
    progress.round_seconds = seconds
    applied = result.ok and result.group_size >= min_group
    if result.group_size <= 1 and expected:
        logger.error("round %d: averaged alone although %d other peers were expected (%s): this peer cannot reach "
                     "them, or they cannot reach it, so its steps are not the run's; it is reachable as '%s' (%s). "
                     "Check the firewall, --host/--port/--announce; the coordinator's status page shows the split",
                     round_index, len(expected), result.reason, peer.network.reachability.mode,
                     peer.network.reachability.detail)
    peer.events.write("round", round=round_index, status=result.status, reason=result.reason,
                      applied=applied, group_size=result.group_size, seconds=seconds,
                      matchmaking_s=result.matchmaking_s, allreduce_s=result.allreduce_s,
                      bytes_sent=result.bytes_sent, bytes_received=result.bytes_received,
                      fp32_bytes=fp32_round_bytes(vector.numel(), result.group_size),
                      members=list(result.group.members) if result.group is not None else [])
    if not applied:
        why = f"{result.status} ({result.reason})"
        if result.ok:
            why = f"group of {result.group_size} is below diloco.min_group_size={min_group}"
        logger.warning("round %d not applied: %s; keeping local progress for the next round", round_index, why)
        return None
    if result.reconstruction is not None:
        progress.residual = vector - result.reconstruction
        norm = float(vector.norm())
        if norm > 0:
            peer.metrics.codec_relative_error.set(float(progress.residual.norm()) / norm)
    if result.group_size > 1:
        peer.metrics.compression_ratio.set(fp32_round_bytes(vector.numel(), result.group_size)
                                           / max(result.bytes_sent, 1))
    training.outer.step(result.average)
    progress.outer_step, progress.group_size = round_index, result.group_size
    global_params = training.outer.global_params
    load_flat_parameters(training.model, global_params if keep is None else global_params - keep)
    grow_after_round(peer, round_index)  # a growth announced for this step: the grown state is this step's
    progress.params_hash = training.outer.params_hash()
    with progress.phases.phase("verify"):
        verify(peer, round_index, result)
    return result


def verify(peer: Peer, round_index: int, result: RoundResult) -> None:
    """Compare hashes with the group's members (:func:`peer.averaging.verify.judge`); re-download the
    state from the agreeing peers when this peer's parameters differ, loading only the reference hash."""
    members = result.group.members if result.group is not None and result.group_size > 1 else ()
    try:
        report = peer.network.averager.verify_round(round_index, peer.progress.params_hash, members=members,
                                                    wait=None if members else 0.0,
                                                    trusted=peer.network.round_sync.view.hash_of(round_index))
    except Exception as exc:
        logger.warning("round %d: could not verify the parameters: %s", round_index, exc)
        return
    if not report.consistent:
        logger.warning("round %d: peers %s hold other parameters than %s", round_index,
                       list(report.disagreeing), list(report.agreeing))
    if not report.i_agree:
        resync(peer, round_index, f"round {round_index}: my parameters differ from the group's",
               donors=list(report.agreeing), sha256=report.reference_hash or "")

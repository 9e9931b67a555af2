# SPDX-License-Identifier: AGPL-3.0-or-later
"""Phase 4 of a peer: the work after an applied round, one small function per job.

:func:`after_round` runs them in order — publish the new state, report the outer step, evaluate,
layer telemetry, report metrics, checkpoint, write the diary line — each timed into
``peer.progress.phases`` (``python -m bench.network`` reports these phases). :func:`publish`,
:func:`evaluate` and :func:`checkpoint` also run after a state download or re-sync (:mod:`peer.sync`).
Every job that talks to the network or the disk logs its failure and lets training go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from lila_data import evaluate_bpb
from lila_data.evaluate import DEFAULT_EVAL_BATCH
from lila_model.telemetry import layer_telemetry
from lila_net.claims import MAX_ANNOUNCE_AHEAD

from .averaging.averager import RoundResult
from .averaging.state_format import StateSnapshot
from .coordinator_client import CoordinatorError
from .parts import Peer, Period

logger = logging.getLogger(__name__)

def publish(peer: Peer) -> None:
    """Serve the current state and announce its outer step (joiners download it; the others now expect
    this peer at the next round)."""
    outer, progress = peer.training.outer, peer.progress
    run_step = peer.network.round_sync.view.step
    if run_step >= 0 and progress.outer_step > run_step + MAX_ANNOUNCE_AHEAD:
        logger.info("not announcing outer step %d: the coordinator's step is %d (an announcement more than %d "
                    "ahead of it would read as a false claim)", progress.outer_step, run_step, MAX_ANNOUNCE_AHEAD)
        return
    snapshot = StateSnapshot(
        tensors={"global_params": outer.global_params, "momentum_buffer": outer.momentum_buffer},
        metadata={"outer_step": progress.outer_step, "params_sha256": progress.params_hash,
                  "model_stage": peer.training.model_stage})
    try:
        peer.network.state_sync.publish(snapshot)
    except Exception as exc:  # serving state is a courtesy; training goes on without it
        logger.warning("could not publish the state of outer step %d: %s", progress.outer_step, exc)


def evaluate(peer: Peer) -> float | None:
    """Validation bits per byte of the parameters held now (None without validation texts)."""
    training = peer.training
    if not training.val_texts:
        return None
    bpb = evaluate_bpb(training.model, training.tokenizer, training.val_texts,
                       seq_len=peer.run.curriculum.max_seq_len, batch_size=DEFAULT_EVAL_BATCH, device=training.device).bpb
    peer.metrics.val_bpb.set(bpb)
    return bpb


def checkpoint(peer: Peer, val_bpb: float | None = None) -> None:
    """Save the state held now (after a round, a download or a re-sync): a restart resumes from the
    newest state this peer ever held, even when no other peer is left to serve it. A failed write
    (disk full) keeps the older checkpoints and training goes on."""
    training, step, run = peer.training, peer.progress.outer_step, peer.run
    try:
        training.store.save(step=step, model=training.model, outer_state=training.outer.state_dict(),
                            inner_state=training.trainer.state_dict(),
                            meta={"outer_step": step, "run": run.run.name, "tokenizer": run.data.tokenizer,
                                  "model_stage": training.model_stage,
                                  "val_bpb": val_bpb, "params_sha256": peer.progress.params_hash,
                                  # `lila eval` scores the run's own data on its validation split only
                                  "data_sources": sorted(set(run.data.sources.values())),
                                  "validation_fraction": run.data.validation_fraction})
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        logger.warning("could not write the checkpoint of outer step %d (%s: %s); the older ones are kept "
                       "and training goes on: free space in %s", step, type(exc).__name__, exc,
                       training.store.root)


def report_outer_step(peer: Peer, members: Sequence[str] = (), *, downloaded: bool = False,
                      caught_up: bool = False) -> None:
    """Report the outer step with the hash of the parameters it produced, the size of its group and its
    ``members`` (libp2p ids; the coordinator counts strike reports about this peer only from them); when
    the coordinator answers that most peers hold other parameters, keep their hash in
    ``peer.progress.majority`` (the node re-syncs to it before its next period, :func:`peer.sync.follow_majority`).

    ``downloaded``: the step was loaded from another peer (a checked download, no round of this peer's):
    reported with group size 0, so that the coordinator counts this peer at that step — the run's step
    needs two join tokens while two take part, and a peer that keeps re-syncing must not hold it back.
    Refused as more than one step ahead of the run (it went on while the others froze): the steps in between
    are reported first (:func:`_catch_up`, once: ``caught_up``), else the peer re-syncs to the step the
    coordinator vouches for."""
    progress = peer.progress
    try:
        group = {"group": tuple(members)} if members else {}
        answer = peer.client.report_outer_step(progress.outer_step, params_sha256=progress.params_hash,
                                               group_size=0 if downloaded else progress.group_size, **group)
    except CoordinatorError as exc:
        if exc.code is grpc.StatusCode.FAILED_PRECONDITION and not caught_up and _catch_up(peer):
            report_outer_step(peer, members, downloaded=downloaded, caught_up=True)  # now one step ahead at most
            return
        if exc.code is grpc.StatusCode.FAILED_PRECONDITION:
            step, sha256 = peer.network.round_sync.view.get()
            if sha256:
                logger.warning("outer step %d is not the run's (the coordinator vouches for step %d: %s); this "
                               "peer went on without enough others, re-syncing to the run's state", progress.outer_step,
                               step, exc)
                progress.majority = (step, sha256)
                return
        logger.warning("could not report outer step %d: %s", progress.outer_step, exc)
        return
    except Exception as exc:
        logger.warning("could not report outer step %d: %s", progress.outer_step, exc)
        return
    if answer.resync and answer.majority_sha256 and answer.majority_sha256 != progress.params_hash:
        logger.warning("outer step %d: most peers hold parameters with sha256 %s, this peer %s (the network is "
                       "split); re-syncing to theirs before the next period", progress.outer_step,
                       answer.majority_sha256, progress.params_hash)
        progress.majority = (progress.outer_step, answer.majority_sha256)


def _catch_up(peer: Peer) -> bool:
    """Report the steps between the run's and this peer's one by one (no hash: the parameters of those steps
    are gone), so that a peer that went on while the others froze is counted once it is the only one taking
    part; True when every step up to the one before this peer's was accepted. The coordinator still moves
    the run's step only with its quorum, one step at a time."""
    progress = peer.progress
    run_step = peer.network.round_sync.view.step
    for step in range(max(run_step, 0) + 1, progress.outer_step):
        try:
            run_step = peer.client.report_outer_step(step, params_sha256="", group_size=0).current_outer_step
        except CoordinatorError:
            return False
    return run_step >= progress.outer_step - 1


def record_telemetry(peer: Peer) -> None:
    """Stable rank and condition number of every attention and MLP weight, as metrics."""
    with peer.progress.phases.phase("telemetry"):
        telemetry = layer_telemetry(peer.training.model)
    for name, stats in telemetry.items():
        peer.metrics.stable_rank.labels(layer=name).set(stats.stable_rank)
        peer.metrics.condition_number.labels(layer=name).set(stats.condition_number)


def report_metrics(peer: Peer, fields: dict[str, Any]) -> None:
    try:
        peer.client.report_metrics(**fields)
    except Exception as exc:
        logger.warning("could not report metrics: %s", exc)


def _due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


def after_round(peer: Peer, period: Period, result: RoundResult) -> None:
    """Everything after round ``result`` was applied (``peer.progress.outer_step`` is its step)."""
    options, progress = peer.options, peer.progress
    phases, step = progress.phases, progress.outer_step
    peer.metrics.outer_step.set(step)
    with phases.phase("publish"):
        publish(peer)
    with phases.phase("report"):
        report_outer_step(peer, () if result.group is None else tuple(result.group.members))
    val_bpb = None
    if _due(options.eval_every, step):
        with phases.phase("evaluate"):
            val_bpb = evaluate(peer)
    if _due(options.telemetry_every, step):
        record_telemetry(peer)
    fields: dict[str, Any] = dict(outer_step=step, loss=period.loss,
                                  tokens_per_s=period.tokens / max(period.seconds, 1e-9),
                                  tokens_processed=period.tokens, bytes_sent=result.bytes_sent,
                                  bytes_received=result.bytes_received,
                                  reachability=peer.network.reachability.mode,
                                  uplink_bytes_per_s=peer.network.link.uplink_bytes_per_s,
                                  downlink_bytes_per_s=peer.network.link.downlink_bytes_per_s)
    if val_bpb is not None:
        fields["val_bpb"] = val_bpb
    with phases.phase("report"):
        report_metrics(peer, fields)
    if _due(options.checkpoint_every, step):
        with phases.phase("checkpoint"):
            checkpoint(peer, val_bpb)
    peer.events.write("outer_step", outer_step=step, params_sha256=progress.params_hash, val_bpb=val_bpb,
                      group_size=result.group_size, status=result.status, tokens=period.tokens,
                      loss=period.loss, round_seconds=progress.round_seconds, phases=phases.rounded(),
                      period_s=round(period.seconds, 4), step_s=round(period.step_seconds, 4))
    logger.info("outer step %d: loss %.4f, %.0f tokens/s, group of %d%s", step, period.loss,
                fields["tokens_per_s"], result.group_size,
                f", val bpb {val_bpb:.4f}" if val_bpb is not None else "")

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Phase 2 of a peer, and every later catch-up: hold the network's global state.

:func:`restore` starts a peer from a verified local checkpoint, the state of a peer further ahead
(downloaded), or — for the first peers of a run — the seeded initialization every peer computes
identically; then it announces the state, so the others expect this peer at the next round: a joiner
enters at an outer-step boundary, synced before it trains. :func:`resync` replaces the local state when
the network moved past this peer (it sat a round out, it was late, its part failed while the others'
did not, its hash disagreed): it drops its local work instead of averaging against a stale base, so every
peer that reports outer step k holds bitwise-identical global parameters. :func:`follow_majority` does it
when the coordinator compared the hashes peers reported for a step and this peer's is not the majority's
(the network split): only a state whose bytes hash to the majority's is loaded. A state of another model
shape (a checkpoint or a download across a curriculum growth) is loaded into parts rebuilt for that shape,
and :func:`catch_up_growth` re-syncs a peer that passed a growth before hearing of it (:mod:`peer.growth`).

Which state is loaded: a donor announcement is a DHT record any admitted peer can write, so neither its
step nor its own hash is trusted, and neither is a published group record (any admitted peer can publish
one naming only itself, with its own hash). The network's step is bounded by the coordinator's
(:class:`peer.network_view.NetworkView`, see :mod:`peer.round_sync`), and a downloaded state of step S is
loaded only when its parameters hash to the trusted hash of S (:func:`trusted_hash`): the hash the
coordinator says most join tokens reported for S, which it names for its recent steps (the step needs
two tokens whenever two take part, :mod:`coordinator.core`). For a step the coordinator counted but names
no majority for (a single reporter — the only peer left training — or a tie) the donor's own announced
hash decides; a state of a step beyond the coordinator's is refused and the next donor tried (a peer
whose download the coordinator has not caught up with yet tries again after the next heartbeat).
``python -m bench.robust --attacks state_hijack,state_hijack_next`` measures it.

Tuning: a live peer re-announces its state every ``DONOR_ANNOUNCE_PERIOD_S`` and a dead one vanishes
after three periods; a joiner the coordinator says is behind looks for a donor for ``DONOR_WAIT_S``.
Shorter periods find donors sooner but load the DHT.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import TypeVar

import torch

from lila_net import phases

from .after_round import checkpoint, evaluate, publish, report_outer_step
from .averaging.state_sync import DownloadResult, StateSyncError
from .errors import Stopped
from .growth import ensure_stage, stage_of
from .outer import load_flat_parameters, params_sha256
from .parts import Peer

logger = logging.getLogger(__name__)

DONOR_ANNOUNCE_PERIOD_S = 2.0  # a live peer re-announces its state this often; a dead one vanishes in 3×
DONOR_WAIT_S = 3 * DONOR_ANNOUNCE_PERIOD_S  # how long a joiner looks for a donor the coordinator implies
IDLE_POLL_S = 1.0  # how often a peer without data asks for a shard again
STOP_POLL_S = 0.2  # how often blocking network calls look at the stop flag
CALL_SLACK_S = 5.0  # beyond a network call's own deadline, before the peer gives up on it
STATE_KEYS = ("global_params", "momentum_buffer")

T = TypeVar("T")


def wait_future(future: concurrent.futures.Future[T], timeout: float, *, stop: threading.Event) -> T:
    """The result of a transport coroutine, cancelled when ``stop`` is set (raises :class:`Stopped`) or
    after ``timeout`` seconds (raises ``concurrent.futures.TimeoutError``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.result(timeout=STOP_POLL_S)
        except concurrent.futures.TimeoutError:
            if stop.is_set():
                future.cancel()
                raise Stopped() from None
            if time.monotonic() >= deadline:
                future.cancel()
                raise


def accept_download(result: DownloadResult, min_step: int, *, sha256: str = "") -> bool:
    """A downloaded state is usable when it is at outer step ``min_step`` or newer, its hash is the one
    its donor announced and, when ``sha256`` is given, the hash of the downloaded bytes themselves is
    that one (a donor's own claim is never enough)."""
    step = result.snapshot.metadata.get("outer_step")
    if not isinstance(step, int) or step < min_step:
        logger.info("donor %s served outer step %r; waiting for %d", result.donor, step, min_step)
        return False
    claimed = result.snapshot.metadata.get("params_sha256")
    if not claimed and not sha256:
        return True
    actual = params_sha256(result.snapshot.tensors["global_params"])
    if claimed and actual != claimed:
        logger.warning("donor %s served parameters whose sha256 is not the one it announced", result.donor)
        return False
    if sha256 and actual != sha256:
        logger.warning("donor %s served parameters with sha256 %s…, not the %s… asked for; trying another donor",
                       result.donor, actual[:12], sha256[:12])
        return False
    return True


def trusted_hash(peer: Peer, step: int) -> str | None:
    """The hash the parameters of outer step ``step`` must have (module docstring): the one the coordinator
    says most join tokens reported for it; "" (the donor's own announced hash decides) for a step the
    coordinator already counted but names no majority for (one reporter, or a tie); None for a step beyond
    the coordinator's (refuse the state: nobody vouches for it)."""
    view = peer.network.round_sync.view
    sha256 = view.hash_of(step)
    if sha256:
        return sha256
    return "" if 0 <= step <= view.step else None


def network_step(peer: Peer) -> int:
    """The highest outer step another (believed, see :mod:`peer.round_sync`) peer announces (-1 when none
    does or the DHT does not answer)."""
    try:
        return peer.network.round_sync.network_step(peer.progress.outer_step)
    except Exception as exc:
        logger.warning("could not read the other peers' outer steps: %s", exc)
        return -1


def state_event(peer: Peer, source: str, *, with_eval: bool = False) -> None:
    """Diary line and log for the state held now (``source``: init, checkpoint, download or resync)."""
    progress = peer.progress
    val_bpb = evaluate(peer) if with_eval else None
    peer.events.write("state", outer_step=progress.outer_step, params_sha256=progress.params_hash, source=source,
                      val_bpb=val_bpb)
    logger.info("holding the global parameters of outer step %d (%s, sha256 %s…)", progress.outer_step, source,
                progress.params_hash[:12])


def restore(peer: Peer, current_outer_step: int) -> None:
    """Local checkpoint first, then a peer further ahead; otherwise the seeded θ_0."""
    training, progress = peer.training, peer.progress
    source = "init"
    local = training.store.load_latest()
    if local is not None:
        ensure_stage(peer, int(local.meta.get("model_stage", 0)))  # a checkpoint written after a growth
        training.outer.load_state_dict(local.outer_state)
        progress.outer_step = training.outer.step_count
        try:
            training.trainer.load_state_dict(local.inner_state)
        except (KeyError, ValueError) as exc:
            logger.warning("inner optimizer state of %s not usable (%s); starting it afresh", local.path, exc)
        source = "checkpoint"
        logger.info("resumed from local checkpoint %s (outer step %d)", local.path.name, progress.outer_step)
    progress.params_hash = training.outer.params_hash()
    deadline = time.monotonic() + DONOR_WAIT_S
    while not peer.stop.is_set():
        best = network_step(peer)
        if best > progress.outer_step and download_state(peer, source="download", min_step=best):
            source = "download"
            break
        if progress.outer_step >= current_outer_step and best <= progress.outer_step:
            break  # nobody is ahead of us (the first peers of a run, or a restart at the run's step)
        if time.monotonic() >= deadline:
            logger.warning("the run is at outer step %d but no peer serves a newer state than ours; "
                           "continuing from %s at outer step %d", current_outer_step, source, progress.outer_step)
            break
        peer.stop.wait(DONOR_ANNOUNCE_PERIOD_S)
    load_flat_parameters(training.model, training.outer.global_params)
    publish(peer)
    state_event(peer, source, with_eval=bool(peer.options.eval_every))
    if source == "download":
        report_outer_step(peer, downloaded=True)
        if peer.options.checkpoint_every:
            checkpoint(peer)


def download_state(peer: Peer, *, source: str, donors: list[str] | None = None,
                   min_step: int | None = None, sha256: str = "") -> bool:
    """Download the newest state (from ``donors`` in order, default: every announced donor, highest
    outer step first), check it (outer step at least ``min_step``, default ours; the hash its donor
    announced; with ``sha256``, that the downloaded parameters hash to it), and load it. True on success.

    With ``sha256`` and no ``donors``, only donors announcing exactly ``min_step`` are asked: parameters
    with that hash exist only at that step."""
    training, progress, state_sync = peer.training, peer.progress, peer.network.state_sync
    peer.heartbeat.phase = phases.SYNCING
    started = time.monotonic()
    wanted = progress.outer_step if min_step is None else min_step
    round_sync = peer.network.round_sync
    try:
        announced = {} if donors is not None else {
            d.peer_id: d.outer_step for d in round_sync.donors(progress.outer_step) if not sha256 or d.outer_step == min_step}
        candidates = donors if donors is not None else list(announced)
        result = None
        for donor in candidates:
            # the state of the step the donor announces (else the one wanted) has this model shape (peer.growth)
            stage = stage_of(peer, max(wanted, announced.get(donor, wanted)))
            shapes = {k: (training.stage_numels[stage],) for k in STATE_KEYS}
            future = peer.network.transport.submit(state_sync.download_async(donors=[donor], expected_shapes=shapes))
            try:
                got: DownloadResult = wait_future(future, state_sync.config.total_timeout + CALL_SLACK_S,
                                                  stop=peer.stop)
            except (StateSyncError, concurrent.futures.TimeoutError) as exc:
                logger.warning("state download from %s failed: %r", donor, exc)
                continue
            served = got.snapshot.metadata.get("outer_step")
            served_stage = stage_of(peer, served) if isinstance(served, int) else 0
            if got.snapshot.metadata.get("model_stage", 0) != served_stage:
                logger.warning("donor %s served model stage %r for outer step %r, whose state has stage %d: refused",
                               donor, got.snapshot.metadata.get("model_stage"), served, served_stage)
                continue
            bound = max(round_sync.view.step, progress.outer_step) + 1
            if isinstance(served, int) and round_sync.view.known and served > bound:
                logger.warning("donor %s served outer step %d, beyond the coordinator's step %d + 1: refused",
                               donor, served, round_sync.view.step)
                continue
            expected = sha256 or (trusted_hash(peer, served) if isinstance(served, int) else "")
            if expected is None:
                logger.warning("donor %s served outer step %d, for which the coordinator names no hash (yet): "
                               "refused", donor, served)
                continue
            if accept_download(got, wanted, sha256=expected):
                result = got
                break
        if result is None:
            raise StateSyncError(f"no donor delivered a valid state (tried {len(candidates)})")
    except StateSyncError as exc:
        logger.warning("could not download the state: %s", exc)
        return False
    ensure_stage(peer, int(result.snapshot.metadata.get("model_stage", 0)))  # across a growth this peer missed
    training.outer.load_state_dict({**result.snapshot.tensors,
                                    "step_count": torch.tensor(int(result.snapshot.metadata["outer_step"]))})
    progress.outer_step, progress.group_size = training.outer.step_count, 0
    progress.params_hash = training.outer.params_hash()
    progress.residual.zero_()  # error feedback of contributions to a base this peer no longer holds
    seconds = time.monotonic() - started
    peer.metrics.state_sync_seconds.set(seconds)
    peer.network.link.observe(sent=0, received=result.bytes_received, seconds=seconds)
    peer.events.write("state_sync", seconds=seconds, bytes=result.bytes_received, donor=result.donor,
                      outer_step=progress.outer_step, source=source)
    logger.info("downloaded state at outer step %d in %.2f s from %s (%d bytes)", progress.outer_step, seconds,
                result.donor, result.bytes_received)
    return True


def resync(peer: Peer, target_step: int, reason: str, *, donors: list[str] | None = None,
           discarded_tokens: int = 0, sha256: str = "") -> bool:
    """Replace the local state with the network's (outer step ``target_step`` or newer; with ``sha256``,
    exactly the parameters with that hash)."""
    progress = peer.progress
    logger.info("%s: the network is at outer step %d, this peer at %d; downloading the state%s", reason,
                target_step, progress.outer_step,
                f" (dropping {discarded_tokens} tokens of local work done on the old base)"
                if discarded_tokens else "")
    deadline = time.monotonic() + DONOR_WAIT_S
    while not download_state(peer, source="resync", donors=donors, min_step=target_step, sha256=sha256):
        if time.monotonic() >= deadline or peer.stop.wait(DONOR_ANNOUNCE_PERIOD_S / 2):
            logger.warning("could not re-sync to outer step %d; training on from outer step %d",
                           target_step, progress.outer_step)
            return False
    peer.metrics.resyncs_total.inc()
    load_flat_parameters(peer.training.model, peer.training.outer.global_params)
    publish(peer)
    state_event(peer, "resync")
    report_outer_step(peer, downloaded=True)
    if peer.options.checkpoint_every:
        checkpoint(peer)
    return True


def follow_majority(peer: Peer) -> bool:
    """Re-sync to the parameters most peers hold when the coordinator said this peer's differ
    (``peer.progress.majority``, set by :func:`peer.after_round.report_outer_step`); True when it did.

    Only a download whose own bytes hash to the majority's sha256 is loaded. When no donor serves one
    within the re-sync's wait, an ERROR line says so and the peer trains on: the coordinator asks again
    at its next report."""
    progress = peer.progress
    if progress.majority is None:
        return False
    (step, sha256), progress.majority = progress.majority, None
    if progress.params_hash == sha256:
        return False  # already re-synced meanwhile (the round's own verification)
    if resync(peer, step, f"outer step {step}: most peers hold other parameters (sha256 {sha256[:12]}…)",
              sha256=sha256):
        return True
    logger.error("no peer served the majority's parameters of outer step %d (sha256 %s); this peer keeps its "
                 "own (%s) and stays split from the others until a later re-sync", step, sha256,
                 progress.params_hash)
    return False


def catch_up_growth(peer: Peer) -> bool:
    """Re-sync when the state held has a smaller model shape than the network's state of the same outer step
    (the growth was announced after this peer passed it, :mod:`peer.growth`); True when it re-synced."""
    step, held = peer.progress.outer_step, peer.training.model_stage
    if stage_of(peer, step) <= held:
        return False
    return resync(peer, max(network_step(peer), step),
                  f"outer step {step} has model stage {stage_of(peer, step)}, this peer holds stage {held} (it "
                  "passed the growth before hearing of it)")


def catch_up(peer: Peer, round_index: int, tokens: int) -> bool:
    """True (after re-syncing) when another peer already finished round ``round_index``."""
    step = network_step(peer)
    if step < round_index:
        return False
    resync(peer, step, f"round {round_index} is already done", discarded_tokens=tokens)
    return True

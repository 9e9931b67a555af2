# SPDX-License-Identifier: AGPL-3.0-or-later
"""A volunteer peer from Join to Leave: the phases of ``lila-peer join`` in order.

1. set-up (:mod:`peer.setup`): join the coordinator and check the memory plan, build the model and its
   optimizers, connect to the DHT and the averaging layer;
2. sync (:mod:`peer.sync`): hold the network's current state (checkpoint, download or θ_0);
3. rounds (:mod:`peer.rounds`): H inner steps, wait at the round barrier (:mod:`peer.round_sync`) for
   the other peers, average, apply the outer step, verify;
4. after each round (:mod:`peer.after_round`): publish, report, evaluate, checkpoint;
5. leave (:meth:`PeerNode.leave`): release leases at their exact resume positions, tell the others and
   the coordinator, shut the averaging layer down.

``WORKDIR/outer-steps.jsonl`` (:mod:`peer.events`) records every round, state and hash.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc
import torch

from lila_net import phases
from lila_net.tls import channel_credentials

from .after_round import after_round
from .coordinator_client import CoordinatorClient, CoordinatorError
from .errors import (
    EXIT_BANNED,
    EXIT_DOES_NOT_FIT,
    EXIT_OK,
    EXIT_TRANSPORT_DIED,
    Banned,
    PlanRefused,
    Stopped,
    TransportDied,
)
from .events import EVENTS_FILE, EventLog
from .heartbeat import Heartbeat
from .logs import PeerContext, adopt_library_loggers
from .metrics import PeerMetrics
from .options import PeerOptions
from .overlap import Overlap
from .parts import Network, Peer, Progress, Training
from .progress import ProgressBar
from .round_sync import BarrierResult
from .rounds import outer_round, train_period
from .setup import build_training, connect_network, join_run, on_heartbeat
from .sync import (
    DONOR_ANNOUNCE_PERIOD_S,
    IDLE_POLL_S,
    catch_up,
    catch_up_growth,
    follow_majority,
    network_step,
    restore,
    resync,
)

logger = logging.getLogger(__name__)

LEAVE_DHT_TIMEOUT_S = 2.0  # a leaving peer's last DHT write (the others then stop waiting for it)


class PeerNode:
    """One peer. :meth:`run` blocks until the run ends, the peer holds outer step ``max_outer_steps``, or
    ``stop`` is set,
    and returns the exit status (:mod:`peer.errors`)."""

    def __init__(self, options: PeerOptions, *, stop: threading.Event,
                 log_context: PeerContext | None = None) -> None:
        self.options = options
        self.stop = stop
        self.log_context = log_context or PeerContext()
        self.metrics = PeerMetrics()
        self.client = CoordinatorClient(options.coordinator, stop=stop,
                                        credentials=channel_credentials(tls=options.tls, ca=options.tls_ca))
        self.bar = ProgressBar(enabled=options.progress)

    # ------------------------------------------------------------------ the phases in order
    def run(self) -> int:
        started = time.monotonic()
        adopt_library_loggers()  # hivemind, imported with this package, logs with the peer id too
        events = EventLog(self.options.workdir / EVENTS_FILE)
        heartbeat: Heartbeat | None = None
        training: Training | None = None
        network: Network | None = None
        progress: Progress | None = None
        banned = False
        code = EXIT_OK
        try:
            joined = join_run(self.options, client=self.client, metrics=self.metrics, log_context=self.log_context)
            events.peer_id = joined.response.peer_id
            if not joined.plan.fits:
                raise PlanRefused(joined.plan.message)
            with self.bar.redirect_logging():
                training = build_training(self.options, joined, client=self.client)
                # The heartbeat thread starts only after the DHT: hivemind forks its DHT process, and a fork
                # while another thread is inside a gRPC call can deadlock the child in gRPC's fork handlers
                # (seen: "Other threads are currently calling into gRPC, skipping fork() handlers", then the
                # peer hung). No lease is held before this point, so nothing expires meanwhile.
                network = connect_network(self.options, joined, training, client=self.client, metrics=self.metrics)
                heartbeat = Heartbeat(self.client, interval_s=joined.response.heartbeat_interval_s,
                                      on_reply=on_heartbeat(network)).start()  # bans, the coordinator's step
                progress = Progress(residual=torch.zeros_like(training.outer.global_params), started=started)
                peer = Peer(options=self.options, stop=self.stop, client=self.client, heartbeat=heartbeat,
                            metrics=self.metrics, events=events, bar=self.bar, joined=joined, training=training,
                            network=network, progress=progress)
                restore(peer, int(joined.response.current_outer_step))
                self._loop(peer)
        except PlanRefused as exc:
            logger.error("%s", exc)
            code = EXIT_DOES_NOT_FIT
        except Stopped:
            pass
        except TransportDied as exc:
            logger.error("%s", exc)
            code = EXIT_TRANSPORT_DIED
        except (Banned, PermissionError) as exc:
            banned, code = True, EXIT_BANNED
            logger.error("%s", exc)
        except CoordinatorError as exc:
            if exc.code is not grpc.StatusCode.PERMISSION_DENIED:
                raise
            banned, code = True, EXIT_BANNED  # any call may be the first to learn it
            logger.error("the coordinator banned this peer from the run: %s", exc)
        finally:
            self.leave(events, banned=banned, heartbeat=heartbeat, training=training, network=network,
                       progress=progress)
        return code

    def _loop(self, peer: Peer) -> None:
        """Rounds until the run ends, this peer holds outer step ``max_outer_steps``, or it is stopped.
        With ``diloco.overlap`` each round averages while the next period trains (:mod:`peer.overlap`)."""
        overlap = Overlap() if peer.run.diloco.overlap else None
        try:
            self._rounds(peer, overlap)
        finally:
            if overlap is not None:
                overlap.close()

    def _rounds(self, peer: Peer, overlap: Overlap | None) -> None:
        last_step = self.options.max_outer_steps
        while not self.stop.is_set():
            in_flight = overlap is not None and overlap.inflight is not None
            if last_step is not None and peer.progress.outer_step >= last_step and not in_flight:
                logger.info("holding outer step %d (--max-outer-steps): leaving", peer.progress.outer_step)
                self._finish(peer, last_step=last_step)
                break
            if peer.network.trust.session.banned or peer.heartbeat.refused:  # credential or heartbeat refused
                raise Banned("the coordinator banned this peer from the run (its contributions were rejected "
                             "by the other peers too often; see the coordinator's status page): leaving")
            if not in_flight:
                follow_majority(peer)  # the coordinator said most peers hold other parameters: take theirs
                catch_up_growth(peer)  # a growth this peer passed before hearing of it: take the grown state
            period = train_period(peer, waiting=overlap.busy if overlap is not None else None)
            if self.stop.is_set():
                break
            if overlap is not None and in_flight:
                overlap.land(peer)  # the round that averaged while this period trained
                if last_step is not None and peer.progress.outer_step >= last_step:
                    continue
            if period.tokens == 0:
                if self.client.run_finished:
                    logger.info("the curriculum has no data left: the run is finished")
                    self._finish(peer)
                    break
                self._idle(peer)
                continue
            if not peer.network.transport.is_alive:
                raise TransportDied("this peer's DHT or p2p daemon stopped; restart `lila-peer join` (it resumes "
                                    "from its checkpoint)")
            round_index = peer.progress.outer_step + 1
            if catch_up(peer, round_index, period.tokens):
                continue
            if overlap is not None:
                overlap.launch(peer, period)
                continue
            try:
                barrier = peer.network.round_sync.wait_for_peers(round_index, stop=self.stop)
            except Exception as exc:  # the DHT misbehaving must not stop training: average without waiting
                logger.warning("round %d: could not wait for the other peers: %s", round_index, exc)
                barrier = BarrierResult(round_index, 0.0, known=False)
            if self.stop.is_set():
                break
            if barrier.moved_on is not None:
                resync(peer, barrier.moved_on, f"round {round_index} finished while waiting",
                       discarded_tokens=period.tokens)
                continue
            result = outer_round(peer, round_index, period, expected=barrier.arrived)
            if result is not None:
                after_round(peer, period, result)

    def _idle(self, peer: Peer) -> None:
        """No shard is free right now (the others hold the last ones): tell the others not to wait for
        this peer, follow the network's outer step, and ask for data again shortly."""
        peer.heartbeat.phase = phases.IDLE
        try:
            peer.network.round_sync.post_absent("idle")
        except Exception as exc:
            logger.warning("could not tell the others this peer is idle: %s", exc)
        step = network_step(peer)
        if step > peer.progress.outer_step:
            resync(peer, step, "idle without data")
        self.stop.wait(IDLE_POLL_S)

    def _finish(self, peer: Peer, *, last_step: int | None = None) -> None:
        """Stay (idle) before leaving until no other live peer still needs this one, following the
        network's outer step (never past ``last_step``), so that every peer ends holding the same
        parameters. Two ways to end: the curriculum has no data left (``last_step`` None: peers still in
        their last inner period average once more, and this peer follows), or this peer holds
        ``--max-outer-steps`` (``last_step``). Either way a peer that is behind — restarted from an older
        checkpoint, or idle while the last round ran — still needs a donor to download the last state from.
        Bounded by one straggler wait, one averaging timeout and three donor announce periods (a peer that
        died silently keeps its announcement that long at most)."""
        peer.heartbeat.phase = phases.IDLE
        round_sync = peer.network.round_sync
        wait = round_sync.straggler_wait_s + peer.run.diloco.averaging_timeout_s + 3 * DONOR_ANNOUNCE_PERIOD_S
        deadline = time.monotonic() + wait
        cap = last_step if last_step is not None else float("inf")
        while not self.stop.is_set():
            try:
                round_sync.post_absent("idle")
                working, idle = round_sync.staying()
            except Exception as exc:
                logger.warning("could not see whether other peers are still training: %s", exc)
                return
            mine = peer.progress.outer_step
            target = int(min(max([donor.outer_step for donor in working + idle], default=-1), cap))
            coming = [donor for donor in working if donor.outer_step < cap]  # may still average up to the cap
            behind = [donor for donor in idle if donor.outer_step < mine]
            if target <= mine and not coming and not behind:
                return
            if time.monotonic() >= deadline:
                logger.warning("leaving at outer step %d (the network is at %d) while %d peer(s) still seem "
                               "to train and %d idle one(s) are behind", mine, target, len(coming), len(behind))
                return
            if target > mine:
                resync(peer, target, "the run is finished" if last_step is None else
                       f"--max-outer-steps {last_step} reached by the network")
            else:
                self.stop.wait(IDLE_POLL_S)

    # ------------------------------------------------------------------ leave
    def leave(self, events: EventLog, *, banned: bool, heartbeat: Heartbeat | None, training: Training | None,
              network: Network | None, progress: Progress | None) -> None:
        """Release leases at their resume positions, leave, and stop every background part — whatever the
        set-up got to build."""
        reason = "stopped" if self.stop.is_set() else "banned" if banned else "done"
        released: list[dict[str, Any]] = []
        self.bar.close()
        if training is not None and not banned:  # a ban already took this peer's leases back
            try:
                for lease, position in training.feed.release():
                    released.append({"lease_id": lease.lease_id, "shard_id": lease.shard.shard_id,
                                     "docs_consumed": position.docs_consumed,
                                     "tokens_consumed": position.tokens_consumed})
            except Exception as exc:
                logger.warning("could not release leases (they expire at the coordinator): %s", exc)
        if heartbeat is not None:
            heartbeat.stop()
        try:
            if not banned:
                self.client.leave(reason)
            logger.info("left the run (%s)", reason)
        except Exception as exc:
            logger.warning("could not say goodbye to the coordinator: %s", exc)
        if network is not None:  # after the coordinator: a Ctrl+C may have taken p2pd down already
            try:
                network.round_sync.post_absent("left", timeout=LEAVE_DHT_TIMEOUT_S)
            except Exception as exc:
                logger.debug("could not tell the other peers this one leaves: %s", exc)
            network.trust.shutdown()  # state sync, averager, transport, then the credential files
        self.metrics.close()
        self.client.close()
        events.write("leave", reason=reason, released=released,
                     outer_step=progress.outer_step if progress is not None else 0,
                     tokens_trained=progress.tokens_trained if progress is not None else 0,
                     tokens_lost=training.feed.lost_tokens if training is not None else 0)
        events.close()

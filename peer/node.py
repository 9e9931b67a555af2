# SPDX-License-Identifier: AGPL-3.0-or-later
"""A volunteer peer from Join to Leave: the DiLoCo loop that ties every part of ``peer/`` together.

1. Join the coordinator (run config, DHT bootstrap addresses, current outer step) and check the memory
   plan; refuse with the planner's message when the preset does not fit.
2. Join the DHT, start the averaging layer, and get the current state: a verified local checkpoint, the
   state of a peer further ahead (downloaded), or — for the first peers of a run — the seeded
   initialization every peer computes identically. Then announce it, so the others expect this peer at
   the next round: a joiner enters at an outer-step boundary, synced before it trains.
3. Repeat: H inner AdamW steps on leased data; wait (bounded) for the other peers of the round
   (:mod:`peer.round_sync`); Δ = θ_global − θ_local plus the error-feedback residual; average with the
   peers of the same outer step (lattice codec, robust aggregation at the part owners); apply the outer
   Nesterov step to θ_global; check through the DHT that the peers hold the same parameters (re-download
   when not); publish the state, report, evaluate, checkpoint.
4. On stop: release leases at their exact resume positions, tell the others and the coordinator, shut the
   averager and DHT down.

A failed round is never applied silently: the peer keeps training from its local parameters, so the next
round's Δ covers both periods. When the network moved past a round without this peer (it sat the round
out, it was late, its part failed while the others' did not), the peer downloads the new state and
drops its local work instead of averaging against a stale base: every peer that reports outer step k
holds bitwise-identical global parameters. ``WORKDIR/outer-steps.jsonl`` (:mod:`peer.events`) records
every round, state and hash.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import torch

from lila_codec import get_codec
from lila_data import curriculum_at, evaluate_bpb, iter_validation_texts, load_tokenizer
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_model.telemetry import layer_telemetry
from lila_net.aggregation import aggregator_for
from lila_net.config import RunConfig, loads_run_config
from lila_net.proto import coordinator_pb2 as pb

from .accountability import TrustedAveraging, open_trusted_averaging
from .averaging.averager import STATUS_FAILED, Averager, RoundResult
from .averaging.config import AveragingConfig
from .averaging.matchmaking import Group
from .averaging.state_format import StateSnapshot
from .averaging.state_sync import DownloadResult, StateSync, StateSyncConfig, StateSyncError
from .averaging.transport import Transport
from .checkpoints import CheckpointStore
from .coordinator_client import CoordinatorClient, CoordinatorError
from .data_feed import DataFeed
from .events import EVENTS_FILE, EventLog, PhaseTimer
from .hardware import detect_hardware
from .heartbeat import Heartbeat
from .inner import InnerTrainer, schedule_position
from .logs import PeerContext, adopt_library_loggers
from .metrics import PeerMetrics
from .outer import OuterOptimizer, flatten_parameters, load_flat_parameters
from .plan import make_plan
from .progress import ProgressBar
from .round_sync import BarrierResult, RoundSync

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 3
EXIT_TRANSPORT_DIED = 4
EXIT_BANNED = 5  # the coordinator banned this peer (its contributions were rejected too often)
VAL_BATCH = 8
STATE_KEYS = ("global_params", "momentum_buffer")
DONOR_ANNOUNCE_PERIOD_S = 2.0  # a live peer re-announces its state this often; a dead one vanishes in 3×
DONOR_WAIT_S = 3 * DONOR_ANNOUNCE_PERIOD_S  # how long a joiner looks for a donor the coordinator implies
STOP_POLL_S = 0.2  # how often blocking network calls look at the stop flag
IDLE_POLL_S = 1.0  # how often a peer without data asks for a shard again
LEAVE_DHT_TIMEOUT_S = 2.0  # a leaving peer's last DHT write (the others then stop waiting for it)
CALL_SLACK_S = 5.0
PROGRESS_REPORT_INTERVAL_S = 1.0  # see peer.data_feed: reports of trained progress, at most this often per lease

T = TypeVar("T")


class PlanRefused(RuntimeError):
    """The run's preset does not fit this device; the message is the memory planner's."""


class Stopped(Exception):
    """The stop flag was set while waiting for the network."""


class TransportDied(RuntimeError):
    """The peer's DHT or p2p daemon is gone (e.g. killed by the OS): the peer cannot average any more."""


class Banned(RuntimeError):
    """The coordinator refused this peer (banned after too many strikes)."""


@dataclass(frozen=True, kw_only=True)
class PeerOptions:
    """Everything ``lila-peer join`` is told on its command line.

    ``straggler_wait_s``: how long this peer waits at each round for the peers it expects (None: the
    run's ``averaging_timeout_s``); see :mod:`peer.round_sync` for how to tune it. ``progress``: the
    progress bar (None: only when stderr is a terminal).

    ``eval_every``: evaluate the validation texts every this many outer steps (0: never). Every peer of a
    round holds the same parameters, and rounds are synchronous, so an evaluation delays the whole network
    by its duration (0.7–1.1 s of a 13–18 s cycle for ``debug`` on one CPU thread here): raise it on slow hardware or
    when someone else watches the run. ``keep_checkpoints``: how many outer steps' checkpoints stay on
    disk (older ones are deleted after each successful write)."""

    coordinator: str
    token: str
    name: str = ""
    device: str = "auto"
    workdir: Path = Path("lila-peer-workdir")
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0
    max_outer_steps: int | None = None
    host: str = "127.0.0.1"
    client_mode: bool = False
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    telemetry_every: int = 5
    eval_every: int = 1
    threads: int | None = None
    straggler_wait_s: float | None = None
    progress: bool | None = None


@dataclass(frozen=True)
class Period:
    """One inner period: ``tokens`` trained in ``seconds`` (0 tokens: no data was available), of which
    ``step_seconds`` inside the optimizer steps themselves (the rest: data, metrics, the status call)."""

    tokens: int
    seconds: float
    loss: float
    step_seconds: float = 0.0


class PeerNode:
    """One peer. :meth:`run` blocks until the run ends, ``max_outer_steps`` are done, or ``stop`` is set."""

    def __init__(self, options: PeerOptions, *, stop: threading.Event,
                 log_context: PeerContext | None = None) -> None:
        self.options = options
        self.stop = stop
        self.log_context = log_context or PeerContext()
        self.metrics = PeerMetrics()
        self.client = CoordinatorClient(options.coordinator, stop=stop)
        self.progress = ProgressBar(enabled=options.progress)
        self.events: EventLog | None = None
        self.transport: Transport | None = None
        self.averager: Averager | None = None
        self.state_sync: StateSync | None = None
        self.round_sync: RoundSync | None = None
        self.trust: TrustedAveraging | None = None
        self.banned = False
        self.heartbeat: Heartbeat | None = None
        self.feed: DataFeed | None = None
        self.outer_step = 0
        self.last_hash = ""
        self.last_loss = 0.0
        self.global_tokens = 0
        self.active_peers = 1
        self.tokens_trained = 0  # committed batches since the process started (credited at the coordinator)
        self.first_step_logged = False
        self.phases = PhaseTimer()
        self.started = time.monotonic()

    # ------------------------------------------------------------------ set-up
    def _join(self) -> RunConfig:
        hw = detect_hardware(self.options.device)
        metrics_address = ""
        if self.options.metrics_port is not None:
            port = self.metrics.serve(host=self.options.metrics_host, port=self.options.metrics_port)
            metrics_address = f"{self.options.metrics_host}:{port}"
            logger.info("metrics on http://%s/metrics", metrics_address)
        self.hardware = hw
        response = self.client.join(
            join_token=self.options.token, peer_name=self.options.name or socket.gethostname(),
            device_type=hw.device, device_name=hw.name, memory_bytes=hw.memory_bytes,
            cpu_cores=psutil.cpu_count() or 1, metrics_address=metrics_address,
        )
        self.log_context.peer_id = response.peer_id
        if self.events is not None:
            self.events.peer_id = response.peer_id
        self.metrics_address = metrics_address
        run = loads_run_config(response.run_config_toml, origin="the coordinator's run config")
        logger.info("joined run %s as %s (outer step %d)", run.run.name, response.peer_id,
                    response.current_outer_step)
        seq_len = max(stage.seq_len for stage in run.curriculum.stages)
        plan = make_plan(run.model.preset, hw, batch_size=run.diloco.batch_size, seq_len=seq_len,
                         variant=run.model.variant)
        logger.info("memory plan:\n%s", plan.render())
        if not plan.fits:
            raise PlanRefused(plan.message)
        self.plan = plan
        return run

    def _build(self, run: RunConfig) -> None:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        overrides = {"variant": run.model.variant, "activation_checkpointing": self.plan.activation_checkpointing,
                     "mixed_precision": self.plan.dtype == "bf16"}
        if run.model.lambda_geo is not None:
            overrides["lambda_geo"] = run.model.lambda_geo
        self.tokenizer = load_tokenizer(run.data.tokenizer)
        config = get_preset(run.model.preset, vocab_size=self.tokenizer.vocab_size, **overrides)
        torch.manual_seed(run.run.seed)  # every peer initializes the same θ_0
        self.model = LilaLM(config)
        self.device = torch.device(self.hardware.device)
        self.model.to(self.device)
        self.outer = OuterOptimizer(flatten_parameters(self.model), lr=run.diloco.outer_lr,
                                    momentum=run.diloco.outer_momentum, nesterov=run.diloco.nesterov)
        self.residual = torch.zeros_like(self.outer.global_params)
        self.trainer = InnerTrainer(self.model, device=self.device, lr=run.curriculum.schedule.peak_lr,
                                    weight_decay=run.diloco.weight_decay, grad_clip=run.diloco.grad_clip,
                                    micro_batch=self.plan.micro_batch, dtype=self.plan.dtype)
        self.feed = DataFeed(self.client, tokenizer=self.tokenizer, batch_size=run.diloco.batch_size,
                             validation_fraction=run.data.validation_fraction,
                             report_interval_s=PROGRESS_REPORT_INTERVAL_S)
        self.codec = get_codec(run.codec.name, **run.codec.options())
        self.aggregator = aggregator_for(run.trust)
        source = next(iter(run.data.sources.values()))
        self.val_texts = list(iter_validation_texts(source, fraction=run.data.validation_fraction,
                                                    max_docs=run.data.validation_max_docs))
        self.store = CheckpointStore(self.options.workdir / "checkpoints", keep=self.options.keep_checkpoints)

    def _connect(self, run: RunConfig) -> None:
        join = self.client.join_response
        run_id = run.run.name.replace(".", "-")
        self.trust = open_trusted_averaging(
            self.client, run_name=run.run.name, run_id=run_id, initial_peers=list(join.dht_initial_peers),
            host=self.options.host, client_mode=self.options.client_mode,
            max_numel=self.outer.global_params.numel(), config=AveragingConfig.for_run(run.diloco),
            state_config=StateSyncConfig(announce_period=DONOR_ANNOUNCE_PERIOD_S))
        self.transport, self.averager = self.trust.transport, self.trust.averager
        self.state_sync = self.trust.state_sync
        wait = self.options.straggler_wait_s
        self.round_sync = RoundSync(self.transport, self.state_sync, run_id=run_id,
                                    straggler_wait_s=run.diloco.averaging_timeout_s if wait is None else wait,
                                    idle_ttl_s=DONOR_ANNOUNCE_PERIOD_S + IDLE_POLL_S * 2)
        logger.info("averaging as libp2p peer %s", self.transport.peer_id)

    # ------------------------------------------------------------------ state
    def _snapshot(self) -> StateSnapshot:
        return StateSnapshot(
            tensors={"global_params": self.outer.global_params, "momentum_buffer": self.outer.momentum_buffer},
            metadata={"outer_step": self.outer_step, "params_sha256": self.last_hash})

    def _publish(self) -> None:
        """Serve the current state and announce its outer step (joiners download it; the others now
        expect this peer at the next round)."""
        assert self.state_sync is not None
        try:
            self.state_sync.publish(self._snapshot())
        except Exception as exc:  # serving state is a courtesy; training goes on without it
            logger.warning("could not publish the state of outer step %d: %s", self.outer_step, exc)

    def _state_event(self, source: str, *, evaluate: bool = False) -> None:
        val_bpb = self._evaluate() if evaluate else None
        assert self.events is not None
        self.events.write("state", outer_step=self.outer_step, params_sha256=self.last_hash, source=source,
                          val_bpb=val_bpb)
        logger.info("holding the global parameters of outer step %d (%s, sha256 %s…)", self.outer_step, source,
                    self.last_hash[:12])

    def _restore(self, current_outer_step: int) -> None:
        """Local checkpoint first, then a peer further ahead; otherwise the seeded θ_0."""
        source = "init"
        local = self.store.load_latest()
        if local is not None:
            self.outer.load_state_dict(local.outer_state)
            self.outer_step = self.outer.step_count
            try:
                self.trainer.load_state_dict(local.inner_state)
            except (KeyError, ValueError) as exc:
                logger.warning("inner optimizer state of %s not usable (%s); starting it afresh", local.path, exc)
            source = "checkpoint"
            logger.info("resumed from local checkpoint %s (outer step %d)", local.path.name, self.outer_step)
        self.last_hash = self.outer.params_hash()
        deadline = time.monotonic() + DONOR_WAIT_S
        while not self.stop.is_set():
            best = self._network_step()
            if best > self.outer_step and self._download_state(source="download", min_step=best):
                source = "download"
                break
            if self.outer_step >= current_outer_step and best <= self.outer_step:
                break  # nobody is ahead of us (the first peers of a run, or a restart at the run's step)
            if time.monotonic() >= deadline:
                logger.warning("the run is at outer step %d but no peer serves a newer state than ours; "
                               "continuing from %s at outer step %d", current_outer_step, source, self.outer_step)
                break
            self.stop.wait(DONOR_ANNOUNCE_PERIOD_S)
        load_flat_parameters(self.model, self.outer.global_params)
        self._publish()
        self._state_event(source, evaluate=bool(self.options.eval_every))
        if source == "download" and self.options.checkpoint_every:
            self._checkpoint()

    def _network_step(self) -> int:
        """The highest outer step another peer announces (-1 when none does or the DHT does not answer)."""
        assert self.round_sync is not None
        try:
            return self.round_sync.network_step()
        except Exception as exc:
            logger.warning("could not read the other peers' outer steps: %s", exc)
            return -1

    def _wait(self, future: concurrent.futures.Future[T], timeout: float) -> T:
        """The result of a transport coroutine, cancelled when the stop flag is set (raises Stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=STOP_POLL_S)
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    future.cancel()
                    raise Stopped() from None
                if time.monotonic() >= deadline:
                    future.cancel()
                    raise

    def _download_state(self, *, source: str, donors: list[str] | None = None, min_step: int | None = None) -> bool:
        """Download the newest state (from ``donors`` in order, default: every announced donor, highest
        outer step first), check it (outer step at least ``min_step``, default ours; the hash its donor
        announced), and load it. True on success."""
        assert self.state_sync is not None and self.transport is not None and self.events is not None
        if self.heartbeat is not None:
            self.heartbeat.phase = "syncing"
        started = time.monotonic()
        shapes = {k: tuple(self.outer.global_params.shape) for k in STATE_KEYS}
        try:
            candidates = donors if donors is not None else [d.peer_id for d in self.state_sync.find_donors()]
            result = None
            for donor in candidates:
                future = self.transport.submit(self.state_sync.download_async(donors=[donor], expected_shapes=shapes))
                try:
                    got: DownloadResult = self._wait(future, self.state_sync.config.total_timeout + CALL_SLACK_S)
                except (StateSyncError, concurrent.futures.TimeoutError) as exc:
                    logger.warning("state download from %s failed: %r", donor, exc)
                    continue
                if self._accept(got, self.outer_step if min_step is None else min_step):
                    result = got
                    break
            if result is None:
                raise StateSyncError(f"no donor delivered a valid state (tried {len(candidates)})")
        except StateSyncError as exc:
            logger.warning("could not download the state: %s", exc)
            return False
        self.outer.load_state_dict({**result.snapshot.tensors,
                                    "step_count": torch.tensor(int(result.snapshot.metadata["outer_step"]))})
        self.outer_step = self.outer.step_count
        self.last_hash = self.outer.params_hash()
        self.residual.zero_()  # error feedback of contributions to a base this peer no longer holds
        seconds = time.monotonic() - started
        self.metrics.state_sync_seconds.set(seconds)
        self.events.write("state_sync", seconds=seconds, bytes=result.bytes_received, donor=result.donor,
                          outer_step=self.outer_step, source=source)
        logger.info("downloaded state at outer step %d in %.2f s from %s (%d bytes)", self.outer_step, seconds,
                    result.donor, result.bytes_received)
        return True

    @staticmethod
    def _accept(result: DownloadResult, min_step: int) -> bool:
        """A downloaded state is usable when it is at outer step ``min_step`` or newer and its hash is the
        one its donor announced."""
        step = result.snapshot.metadata.get("outer_step")
        if not isinstance(step, int) or step < min_step:
            logger.info("donor %s served outer step %r; waiting for %d", result.donor, step, min_step)
            return False
        claimed = result.snapshot.metadata.get("params_sha256")
        if claimed:
            actual = hashlib.sha256(result.snapshot.tensors["global_params"].numpy().tobytes()).hexdigest()
            if actual != claimed:
                logger.warning("donor %s served parameters whose sha256 is not the one it announced", result.donor)
                return False
        return True

    def _resync(self, network_step: int, reason: str, *, donors: list[str] | None = None,
                discarded_tokens: int = 0) -> bool:
        """Replace the local state with the network's (outer step ``network_step`` or newer)."""
        logger.info("%s: the network is at outer step %d, this peer at %d; downloading the state%s", reason,
                    network_step, self.outer_step,
                    f" (dropping {discarded_tokens} tokens of local work done on the old base)"
                    if discarded_tokens else "")
        deadline = time.monotonic() + DONOR_WAIT_S
        while not self._download_state(source="resync", donors=donors, min_step=network_step):
            if time.monotonic() >= deadline or self.stop.wait(DONOR_ANNOUNCE_PERIOD_S / 2):
                logger.warning("could not re-sync to outer step %d; training on from outer step %d",
                               network_step, self.outer_step)
                return False
        self.metrics.resyncs_total.inc()
        load_flat_parameters(self.model, self.outer.global_params)
        self._publish()
        self._state_event("resync")
        if self.options.checkpoint_every:
            self._checkpoint()
        return True

    def _catch_up(self, round_index: int, tokens: int) -> bool:
        """True (after re-syncing) when another peer already finished round ``round_index``."""
        step = self._network_step()
        if step < round_index:
            return False
        self._resync(step, f"round {round_index} is already done", discarded_tokens=tokens)
        return True

    # ------------------------------------------------------------------ training
    def _global_progress(self) -> tuple[int, int]:
        """Tokens trained by the whole run and the number of active peers (for the learning-rate
        schedule); the last known values when the coordinator does not answer right away, so a hiccup
        never restarts the warm-up."""
        try:
            status = self.client.status(retry=False)
            self.global_tokens = int(status.global_tokens)
            self.active_peers = max(1, int(status.peers_by_state.get("active", 1)))
        except Exception as exc:  # a status failure must not stop training
            logger.warning("could not read global progress (using %d tokens, %d peers): %s", self.global_tokens,
                           self.active_peers, exc)
        return self.global_tokens, self.active_peers

    def _inner_period(self, run: RunConfig) -> Period:
        """Up to H inner steps; fewer when the data runs out or the peer is stopping."""
        assert self.feed is not None and self.heartbeat is not None and self.events is not None
        self.heartbeat.phase = "training"
        self.progress.start_period(outer_step=self.outer_step + 1, inner_steps=run.diloco.inner_steps)
        global_tokens, peers = self._global_progress()
        tokens = 0
        losses = []
        step_seconds = 0.0
        started = time.perf_counter()
        for _ in range(run.diloco.inner_steps):
            if self.stop.is_set():
                break
            batch = self.feed.next_batch(wait=False)  # no shard free now: end the period, never block
            if batch is None:
                break
            point = curriculum_at(run.curriculum, schedule_position(global_tokens, tokens, peers))
            self.trainer.set_lr(point.lr)
            stats = self.trainer.step(batch.inputs, batch.targets)
            self.feed.commit(batch)
            tokens += stats.tokens
            self.tokens_trained += stats.tokens
            losses.append(stats.ce_loss)
            step_seconds += stats.seconds
            tokens_per_s = stats.tokens / max(stats.seconds, 1e-9)
            self.metrics.tokens_total.inc(stats.tokens)
            self.metrics.loss.set(stats.ce_loss)
            self.metrics.geo_loss.set(stats.geo_loss)
            self.metrics.learning_rate.set(point.lr)
            self.metrics.tokens_per_second.set(tokens_per_s)
            self.progress.inner_step(loss=stats.ce_loss, tokens_per_s=tokens_per_s)
            self.last_loss = stats.ce_loss
            if not self.first_step_logged:
                self.first_step_logged = True
                seconds = time.monotonic() - self.started
                process_seconds = time.time() - psutil.Process().create_time()
                self.events.write("first_step", seconds=seconds, process_seconds=process_seconds)
                logger.info("first training step done %.1f s after joining (%.1f s after the process started)",
                            seconds, process_seconds)
        self.feed.flush()  # the run's token count is current before the round (and the next period's schedule)
        loss = sum(losses) / len(losses) if losses else 0.0
        return Period(tokens=tokens, seconds=time.perf_counter() - started, loss=loss, step_seconds=step_seconds)

    def _on_group(self, group: Group) -> None:  # runs on the transport loop: keep it short
        assert self.events is not None
        self.events.write("group", round=group.round_index, members=list(group.members), leader=group.leader)

    def _average(self, round_index: int, vector: torch.Tensor, *,
                 expected: frozenset[str] | None = None) -> RoundResult:
        """One averaging round; ``expected``: the peers the round barrier saw arrive (None: unknown)."""
        assert self.averager is not None and self.transport is not None
        future = self.transport.submit(self.averager.average_async(
            round_index, vector, codec=self.codec, aggregator=self.aggregator, on_group=self._on_group,
            want_reconstruction=True, expected_peers=expected))
        try:
            return self._wait(future, self.averager.round_timeout + CALL_SLACK_S)
        except concurrent.futures.TimeoutError:
            return RoundResult(round_index, STATUS_FAILED, "the round did not end in time", None, None)

    def _outer_round(self, run: RunConfig, round_index: int, period: Period, *,
                     expected: frozenset[str] | None = None) -> RoundResult | None:
        """Average and apply outer step ``round_index``; the result when it was applied, else None."""
        assert self.averager is not None and self.heartbeat is not None and self.events is not None
        self.heartbeat.phase = "averaging"
        self.events.write("round_start", round=round_index)
        self.phases = PhaseTimer()  # what follows the averaging itself, written with the outer step
        delta = self.outer.pseudo_gradient(flatten_parameters(self.model))
        vector = delta + self.residual  # error feedback: what earlier rounds' codec dropped
        started = time.perf_counter()
        result = self._average(round_index, vector, expected=expected)
        seconds = time.perf_counter() - started
        if self.trust is not None:
            self.trust.report_round(result)  # rejections in this peer's part -> ReportStrike
        self.metrics.round_seconds.observe(seconds)
        self.metrics.rounds_total.labels(outcome=result.status).inc()
        self.metrics.group_size.set(result.group_size)
        self.metrics.bytes_sent.inc(result.bytes_sent)
        self.metrics.bytes_received.inc(result.bytes_received)
        self.progress.round_done(seconds=seconds, bytes_exchanged=result.bytes_sent + result.bytes_received,
                                 group_size=result.group_size)
        self.last_round = result
        self.last_round_seconds = seconds
        applied = result.ok and result.group_size >= run.diloco.min_group_size
        self.events.write("round", round=round_index, status=result.status, reason=result.reason,
                          applied=applied, group_size=result.group_size, seconds=seconds,
                          matchmaking_s=result.matchmaking_s, allreduce_s=result.allreduce_s,
                          bytes_sent=result.bytes_sent, bytes_received=result.bytes_received,
                          members=list(result.group.members) if result.group is not None else [])
        if not applied:
            why = result.reason if result.ok else f"{result.status} ({result.reason})"
            if result.ok:
                why = f"group of {result.group_size} is below diloco.min_group_size={run.diloco.min_group_size}"
            logger.warning("round %d not applied: %s; keeping local progress for the next round", round_index, why)
            return None
        if result.reconstruction is not None:
            self.residual = vector - result.reconstruction
            norm = float(vector.norm())
            if norm > 0:
                self.metrics.codec_relative_error.set(float(self.residual.norm()) / norm)
        sent = max(result.bytes_sent, 1)
        if result.group_size > 1:
            self.metrics.compression_ratio.set(vector.numel() * 4 * (result.group_size - 1)
                                               / result.group_size / sent)
        self.outer.step(result.average)
        self.outer_step = round_index
        load_flat_parameters(self.model, self.outer.global_params)
        self.last_hash = self.outer.params_hash()
        with self.phases.phase("verify"):
            self._verify(round_index, result)
        return result

    def _verify(self, round_index: int, result: RoundResult) -> None:
        """Compare hashes with the group (and anyone else who published for this round)."""
        assert self.averager is not None
        members = result.group.members if result.group is not None and result.group_size > 1 else ()
        try:
            report = self.averager.verify_round(round_index, self.last_hash, members=members,
                                                wait=None if members else 0.0)
        except Exception as exc:
            logger.warning("round %d: could not verify the parameters: %s", round_index, exc)
            return
        self.last_verify = report
        if not report.consistent:
            logger.warning("round %d: peers %s hold other parameters than %s", round_index,
                           list(report.disagreeing), list(report.agreeing))
        if not report.i_agree:
            self._resync(round_index, f"round {round_index}: my parameters differ from the group's",
                         donors=list(report.agreeing))

    def _evaluate(self) -> float | None:
        if not self.val_texts:
            return None
        seq_len = max(stage.seq_len for stage in self.run_config.curriculum.stages)
        bpb = evaluate_bpb(self.model, self.tokenizer, self.val_texts, seq_len=seq_len, batch_size=VAL_BATCH,
                           device=self.device).bpb
        self.metrics.val_bpb.set(bpb)
        return bpb

    def _after_round(self, run: RunConfig, period: Period, result: RoundResult) -> None:
        assert self.events is not None
        phases = self.phases
        self.metrics.outer_step.set(self.outer_step)
        with phases.phase("publish"):
            self._publish()
        with phases.phase("report"):
            try:
                self.client.report_outer_step(self.outer_step)
            except Exception as exc:
                logger.warning("could not report outer step %d: %s", self.outer_step, exc)
        val_bpb = None
        if self.options.eval_every and self.outer_step % self.options.eval_every == 0:
            with phases.phase("evaluate"):
                val_bpb = self._evaluate()
        if self.options.telemetry_every and self.outer_step % self.options.telemetry_every == 0:
            with phases.phase("telemetry"):
                telemetry = layer_telemetry(self.model)
            for name, stats in telemetry.items():
                self.metrics.stable_rank.labels(layer=name).set(stats.stable_rank)
                self.metrics.condition_number.labels(layer=name).set(stats.condition_number)
        fields: dict[str, Any] = dict(outer_step=self.outer_step, loss=period.loss,
                                      tokens_per_s=period.tokens / max(period.seconds, 1e-9),
                                      tokens_processed=period.tokens, bytes_sent=result.bytes_sent,
                                      bytes_received=result.bytes_received)
        if val_bpb is not None:
            fields["val_bpb"] = val_bpb
        with phases.phase("report"):
            try:
                self.client.report_metrics(**fields)
            except Exception as exc:
                logger.warning("could not report metrics: %s", exc)
        if self.options.checkpoint_every and self.outer_step % self.options.checkpoint_every == 0:
            with phases.phase("checkpoint"):
                self._checkpoint(val_bpb)
        self.events.write("outer_step", outer_step=self.outer_step, params_sha256=self.last_hash, val_bpb=val_bpb,
                          group_size=result.group_size, status=result.status, tokens=period.tokens,
                          loss=period.loss, round_seconds=self.last_round_seconds, phases=phases.rounded(),
                          period_s=round(period.seconds, 4), step_s=round(period.step_seconds, 4))
        logger.info("outer step %d: loss %.4f, %.0f tokens/s, group of %d%s", self.outer_step, period.loss,
                    fields["tokens_per_s"], result.group_size,
                    f", val bpb {val_bpb:.4f}" if val_bpb is not None else "")

    def _checkpoint(self, val_bpb: float | None = None) -> None:
        """Save the state held now (after a round, a download or a re-sync): a restart resumes from the
        newest state this peer ever held, even when no other peer is left to serve it. A failed write
        (disk full) keeps the older checkpoints and training goes on."""
        run = self.run_config
        try:
            self.store.save(step=self.outer_step, model=self.model, outer_state=self.outer.state_dict(),
                            inner_state=self.trainer.state_dict(),
                            meta={"outer_step": self.outer_step, "run": run.run.name,
                                  "tokenizer": run.data.tokenizer, "val_bpb": val_bpb,
                                  "params_sha256": self.last_hash})
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
            logger.warning("could not write the checkpoint of outer step %d (%s: %s); the older ones are kept "
                           "and training goes on: free space in %s", self.outer_step, type(exc).__name__, exc,
                           self.store.root)

    def _idle(self) -> None:
        """No shard is free right now (the others hold the last ones): tell the others not to wait for
        this peer, follow the network's outer step, and ask for data again shortly."""
        assert self.round_sync is not None and self.heartbeat is not None
        self.heartbeat.phase = "idle"
        try:
            self.round_sync.post_absent("idle")
        except Exception as exc:
            logger.warning("could not tell the others this peer is idle: %s", exc)
        step = self._network_step()
        if step > self.outer_step:
            self._resync(step, "idle without data")
        self.stop.wait(IDLE_POLL_S)

    def _finish(self, run: RunConfig) -> None:
        """The curriculum has no data left, but peers still in their last inner period will average once
        more. Stay (idle) until every other live peer is idle or gone, following the network's outer
        step, so that every peer ends the run holding the same parameters. Bounded: a peer that died
        silently keeps its announcement for three announce periods at most."""
        assert self.round_sync is not None and self.heartbeat is not None
        self.heartbeat.phase = "idle"
        wait = self.round_sync.straggler_wait_s + run.diloco.averaging_timeout_s + 3 * DONOR_ANNOUNCE_PERIOD_S
        deadline = time.monotonic() + wait
        while not self.stop.is_set():
            try:
                self.round_sync.post_absent("idle")
                working = self.round_sync.working()
            except Exception as exc:
                logger.warning("could not see whether other peers are still training: %s", exc)
                return
            step = self._network_step()
            if step <= self.outer_step and not working:
                return
            if time.monotonic() >= deadline:
                logger.warning("leaving at outer step %d (the network is at %d) while %d peer(s) still seem "
                               "to train", self.outer_step, step, len(working))
                return
            if step > self.outer_step:
                self._resync(step, "the run is finished")
            else:
                self.stop.wait(IDLE_POLL_S)

    # ------------------------------------------------------------------ main loop
    def _on_heartbeat(self, response: pb.HeartbeatResponse) -> None:
        if self.trust is not None:
            self.trust.on_heartbeat(response)  # banned peers are refused by averaging and state sync at once

    def _refused(self) -> bool:
        """True once the coordinator banned this peer (credential refused, or heartbeat PERMISSION_DENIED)."""
        banned = self.trust is not None and self.trust.session.banned
        return banned or (self.heartbeat is not None and self.heartbeat.refused)

    def _loop(self, run: RunConfig) -> None:
        assert self.round_sync is not None
        done = 0
        while not self.stop.is_set():
            if self.options.max_outer_steps is not None and done >= self.options.max_outer_steps:
                break
            if self._refused():
                raise Banned("the coordinator banned this peer from the run (its contributions were rejected "
                             "by the other peers too often; see the coordinator's status page): leaving")
            period = self._inner_period(run)
            if self.stop.is_set():
                break
            if period.tokens == 0:
                if self.client.run_finished:
                    logger.info("the curriculum has no data left: the run is finished")
                    self._finish(run)
                    break
                self._idle()
                continue
            if self.transport is not None and not self.transport.is_alive:
                raise TransportDied("this peer's DHT or p2p daemon stopped; restart `lila-peer join` (it resumes "
                                    "from its checkpoint)")
            round_index = self.outer_step + 1
            if self._catch_up(round_index, period.tokens):
                continue
            try:
                barrier = self.round_sync.wait_for_peers(round_index, stop=self.stop)
            except Exception as exc:  # the DHT misbehaving must not stop training: average without waiting
                logger.warning("round %d: could not wait for the other peers: %s", round_index, exc)
                barrier = BarrierResult(round_index, 0.0, known=False)
            if self.stop.is_set():
                break
            if barrier.moved_on is not None:
                self._resync(barrier.moved_on, f"round {round_index} finished while waiting",
                             discarded_tokens=period.tokens)
                continue
            result = self._outer_round(run, round_index, period, expected=barrier.arrived)
            if result is not None:
                done += 1
                self._after_round(run, period, result)

    def run(self) -> int:
        self.started = time.monotonic()
        adopt_library_loggers()  # hivemind, imported with this module, logs with the peer id too
        self.events = EventLog(self.options.workdir / EVENTS_FILE)
        try:
            run = self._join()
        except PlanRefused as exc:
            logger.error("%s", exc)
            self.close()
            return EXIT_DOES_NOT_FIT
        self.run_config = run
        join = self.client.join_response
        self.heartbeat = Heartbeat(self.client, interval_s=join.heartbeat_interval_s, on_reply=self._on_heartbeat)
        try:
            with self.progress.redirect_logging():
                self._build(run)
                # The heartbeat thread starts only after the DHT: hivemind forks its DHT process, and a fork
                # while another thread is inside a gRPC call can deadlock the child in gRPC's fork handlers
                # (seen: "Other threads are currently calling into gRPC, skipping fork() handlers", then
                # the peer hung). No lease is held before this point, so nothing expires meanwhile.
                self._connect(run)
                self.heartbeat.start()
                self._restore(int(join.current_outer_step))
                self._loop(run)
        except Stopped:
            pass
        except TransportDied as exc:
            logger.error("%s", exc)
            return EXIT_TRANSPORT_DIED
        except (Banned, PermissionError) as exc:
            self.banned = True
            logger.error("%s", exc)
            return EXIT_BANNED
        except CoordinatorError as exc:
            if exc.code is not grpc.StatusCode.PERMISSION_DENIED:
                raise
            self.banned = True  # any call may be the first to learn it
            logger.error("the coordinator banned this peer from the run: %s", exc)
            return EXIT_BANNED
        finally:
            self.close()
        return EXIT_OK

    def close(self) -> None:
        """Release leases at their resume positions, leave, and stop every background part."""
        reason = "stopped" if self.stop.is_set() else "banned" if self.banned else "done"
        released: list[dict[str, Any]] = []
        self.progress.close()
        if self.feed is not None and not self.banned:  # a ban already took this peer's leases back
            try:
                for lease, position in self.feed.release():
                    released.append({"lease_id": lease.lease_id, "shard_id": lease.shard.shard_id,
                                     "docs_consumed": position.docs_consumed,
                                     "tokens_consumed": position.tokens_consumed})
            except Exception as exc:
                logger.warning("could not release leases (they expire at the coordinator): %s", exc)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        try:
            if not self.banned:
                self.client.leave(reason)
            logger.info("left the run (%s)", reason)
        except Exception as exc:
            logger.warning("could not say goodbye to the coordinator: %s", exc)
        if self.round_sync is not None:  # after the coordinator: a Ctrl+C may have taken p2pd down already
            try:
                self.round_sync.post_absent("left", timeout=LEAVE_DHT_TIMEOUT_S)
            except Exception as exc:
                logger.debug("could not tell the other peers this one leaves: %s", exc)
        if self.trust is not None:
            self.trust.shutdown()  # state sync, averager, transport, then the credential files
        self.metrics.close()
        self.client.close()
        if self.events is not None:
            self.events.write("leave", reason=reason, released=released, outer_step=self.outer_step,
                              tokens_trained=self.tokens_trained,
                              tokens_lost=self.feed.lost_tokens if self.feed is not None else 0)
            self.events.close()

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A volunteer peer from Join to Leave: the DiLoCo loop that ties every part of ``peer/`` together.

1. Join the coordinator (run config, DHT bootstrap addresses, current outer step) and check the memory
   plan; refuse with the planner's message when the preset does not fit.
2. Join the DHT, start the averaging layer, and get the current state: a verified local checkpoint, the
   state of a peer further ahead (downloaded), or — for the first peers of a run — the seeded
   initialization every peer computes identically.
3. Repeat: H inner AdamW steps on leased data; Δ = θ_global − θ_local plus the error-feedback residual;
   average with the peers of the same outer step (lattice codec, robust aggregation at the part owners);
   apply the outer Nesterov step to θ_global; check through the DHT that every group member holds the
   same parameters (re-download when not); report, checkpoint, publish the state for joiners.
4. On stop: release leases at their exact resume positions, leave, shut the averager and DHT down.

A failed round is never applied silently: the peer keeps training from its local parameters, so the next
round's Δ covers both periods, and it re-syncs from another peer if the others moved on without it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from lila_codec import get_codec
from lila_data import curriculum_at, evaluate_bpb, iter_validation_texts, load_tokenizer
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_model.telemetry import layer_telemetry
from lila_run.config import RunConfig, loads_run_config

from .averaging.aggregators import get_aggregator
from .averaging.auth import StaticTokenAuthorizer
from .averaging.averager import Averager
from .averaging.config import AveragingConfig
from .averaging.state_format import StateSnapshot
from .averaging.state_sync import StateSync, StateSyncError
from .averaging.transport import Transport
from .checkpoints import CheckpointStore
from .coordinator_client import CoordinatorClient
from .data_feed import DataFeed
from .hardware import detect_hardware
from .heartbeat import Heartbeat
from .inner import InnerTrainer
from .metrics import PeerMetrics
from .outer import OuterOptimizer, flatten_parameters, load_flat_parameters
from .plan import make_plan

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 3
VAL_BATCH = 8
STATE_KEYS = ("global_params", "momentum_buffer")


def codec_options(run: RunConfig) -> dict[str, object]:
    """The lila_codec options the run's [codec] section asks for."""
    c = run.codec
    if c.name in ("fp32", "fp16"):
        return {}
    # rotation=None lets the codec pick its Hadamard size (the largest power of two dividing the block); 0 = off
    options: dict[str, object] = {"block": c.block_size, "rotation": None if c.hadamard else 0, "dither": c.dither}
    if c.name == "e8":
        options["bits"] = c.bits
    return options


class PlanRefused(RuntimeError):
    """The run's preset does not fit this device; the message is the memory planner's."""


@dataclass(frozen=True, kw_only=True)
class PeerOptions:
    """Everything ``lila-peer join`` is told on its command line."""

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
    telemetry_every: int = 5
    eval_every: int = 1
    threads: int | None = None


class PeerNode:
    """One peer. :meth:`run` blocks until the run ends, ``max_outer_steps`` are done, or ``stop`` is set."""

    def __init__(self, options: PeerOptions, *, stop: threading.Event) -> None:
        self.options = options
        self.stop = stop
        self.metrics = PeerMetrics()
        self.client = CoordinatorClient(options.coordinator, stop=stop)
        self.transport: Transport | None = None
        self.averager: Averager | None = None
        self.state_sync: StateSync | None = None
        self.heartbeat: Heartbeat | None = None
        self.feed: DataFeed | None = None
        self.outer_step = 0
        self.last_hash = ""

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
                             validation_fraction=run.data.validation_fraction)
        self.codec = get_codec(run.codec.name, **codec_options(run))
        self.aggregator = get_aggregator(run.trust.aggregator)
        source = next(iter(run.data.sources.values()))
        self.val_texts = list(iter_validation_texts(source, fraction=run.data.validation_fraction,
                                                    max_docs=run.data.validation_max_docs))
        self.store = CheckpointStore(self.options.workdir / "checkpoints")

    def _connect(self, run: RunConfig) -> None:
        join = self.client.join_response
        self.transport = Transport.create(initial_peers=list(join.dht_initial_peers),
                                          host_maddrs=[f"/ip4/{self.options.host}/tcp/0"],
                                          client_mode=self.options.client_mode)
        if not join.averaging_key:
            raise RuntimeError("the coordinator sent no averaging key: it is older than this peer; "
                               "ask the organizer to upgrade it")
        key = join.averaging_key.encode()
        authorize = StaticTokenAuthorizer([key])
        cfg = AveragingConfig(matchmaking_time=run.diloco.matchmaking_time_s,
                              part_timeout=run.diloco.averaging_timeout_s / 2,
                              result_timeout=run.diloco.averaging_timeout_s / 2)
        run_id = run.run.name.replace(".", "-")
        self.averager = Averager(self.transport, run_id=run_id, credential=key, authorize=authorize,
                                 max_numel=self.outer.global_params.numel(), config=cfg)
        self.state_sync = StateSync(self.transport, run_id=run_id, credential=key, authorize=authorize)

    def _restore(self, current_outer_step: int) -> None:
        """Local checkpoint first, then a peer further ahead; otherwise the seeded θ_0."""
        local = self.store.load_latest()
        if local is not None:
            self.outer.load_state_dict(local.outer_state)
            self.outer_step = self.outer.step_count
            logger.info("resumed from local checkpoint %s (outer step %d)", local.path.name, self.outer_step)
        if current_outer_step > self.outer_step:
            self._download_state()
        load_flat_parameters(self.model, self.outer.global_params)

    def _download_state(self) -> bool:
        assert self.state_sync is not None
        started = time.monotonic()
        shapes = {k: tuple(self.outer.global_params.shape) for k in STATE_KEYS}
        try:
            result = self.state_sync.download(expected_shapes=shapes)
        except StateSyncError as exc:
            logger.warning("could not download the state from any peer: %s", exc)
            return False
        self.outer.load_state_dict({**result.snapshot.tensors,
                                    "step_count": torch.tensor(int(result.snapshot.metadata["outer_step"]))})
        self.outer_step = self.outer.step_count
        self.residual.zero_()
        self.state_sync_seconds = time.monotonic() - started
        logger.info("downloaded state at outer step %d in %.2f s", self.outer_step, self.state_sync_seconds)
        return True

    # ------------------------------------------------------------------ training
    def _global_tokens(self) -> int:
        try:
            return int(self.client.status().global_tokens)
        except Exception as exc:  # a status failure must not stop training
            logger.warning("could not read global progress: %s", exc)
            return 0

    def _inner_period(self, run: RunConfig) -> tuple[int, float] | None:
        """H inner steps; returns (tokens, seconds), or None when the data is exhausted."""
        assert self.feed is not None and self.heartbeat is not None
        self.heartbeat.phase = "training"
        global_tokens = self._global_tokens()
        tokens = 0
        started = time.perf_counter()
        for _ in range(run.diloco.inner_steps):
            if self.stop.is_set():
                break
            batch = self.feed.next_batch()
            if batch is None:
                return None if tokens == 0 else (tokens, time.perf_counter() - started)
            point = curriculum_at(run.curriculum, global_tokens + tokens)
            self.trainer.set_lr(point.lr)
            stats = self.trainer.step(batch.inputs, batch.targets)
            self.feed.commit(batch)
            tokens += stats.tokens
            self.metrics.tokens_total.inc(stats.tokens)
            self.metrics.loss.set(stats.ce_loss)
            self.metrics.geo_loss.set(stats.geo_loss)
            self.metrics.learning_rate.set(point.lr)
            self.metrics.tokens_per_second.set(stats.tokens / max(stats.seconds, 1e-9))
            self.last_loss = stats.ce_loss
        return tokens, time.perf_counter() - started

    def _outer_round(self) -> bool:
        """Average and apply one outer step. True when the global parameters moved."""
        assert self.averager is not None and self.heartbeat is not None
        self.heartbeat.phase = "averaging"
        round_index = self.outer_step + 1
        delta = self.outer.pseudo_gradient(flatten_parameters(self.model))
        vector = delta + self.residual  # error feedback: what earlier rounds' codec dropped
        started = time.perf_counter()
        result = self.averager.average(round_index, vector, codec=self.codec, aggregator=self.aggregator,
                                       want_reconstruction=True)
        self.metrics.round_seconds.observe(time.perf_counter() - started)
        self.metrics.rounds_total.labels(outcome=result.status).inc()
        self.metrics.group_size.set(result.group_size)
        self.metrics.bytes_sent.inc(result.bytes_sent)
        self.metrics.bytes_received.inc(result.bytes_received)
        self.last_round = result
        if not result.ok:
            logger.warning("round %d: %s (%s); keeping local progress for the next round",
                           round_index, result.status, result.reason)
            return False
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
        if result.group is not None and result.group_size > 1:
            report = self.averager.verify_round(round_index, self.last_hash, members=result.group.members)
            self.last_verify = report
            if not report.consistent:
                logger.warning("round %d: peers %s hold other parameters than %s", round_index,
                               list(report.disagreeing), list(report.agreeing))
            if not report.i_agree:
                logger.warning("round %d: my parameters differ from the group's; re-syncing", round_index)
                if self._download_state():
                    load_flat_parameters(self.model, self.outer.global_params)
        return True

    def _after_round(self, run: RunConfig, tokens: int, seconds: float) -> None:
        assert self.state_sync is not None
        self.metrics.outer_step.set(self.outer_step)
        self.state_sync.publish(StateSnapshot(
            tensors={"global_params": self.outer.global_params, "momentum_buffer": self.outer.momentum_buffer},
            metadata={"outer_step": self.outer_step}))
        try:
            self.client.report_outer_step(self.outer_step)
        except Exception as exc:
            logger.warning("could not report outer step %d: %s", self.outer_step, exc)
        val_bpb = None
        if self.options.eval_every and self.outer_step % self.options.eval_every == 0 and self.val_texts:
            seq_len = max(stage.seq_len for stage in run.curriculum.stages)
            val_bpb = evaluate_bpb(self.model, self.tokenizer, self.val_texts, seq_len=seq_len,
                                   batch_size=VAL_BATCH, device=self.device).bpb
            self.metrics.val_bpb.set(val_bpb)
        if self.options.telemetry_every and self.outer_step % self.options.telemetry_every == 0:
            for name, stats in layer_telemetry(self.model).items():
                self.metrics.stable_rank.labels(layer=name).set(stats.stable_rank)
                self.metrics.condition_number.labels(layer=name).set(stats.condition_number)
        fields = dict(outer_step=self.outer_step, loss=getattr(self, "last_loss", 0.0),
                      tokens_per_s=tokens / max(seconds, 1e-9), tokens_processed=tokens,
                      bytes_sent=self.last_round.bytes_sent, bytes_received=self.last_round.bytes_received)
        if val_bpb is not None:
            fields["val_bpb"] = val_bpb
        try:
            self.client.report_metrics(**fields)
        except Exception as exc:
            logger.warning("could not report metrics: %s", exc)
        if self.options.checkpoint_every and self.outer_step % self.options.checkpoint_every == 0:
            self.store.save(step=self.outer_step, model=self.model, outer_state=self.outer.state_dict(),
                            inner_state=self.trainer.state_dict(),
                            meta={"outer_step": self.outer_step, "run": run.run.name,
                                  "tokenizer": run.data.tokenizer, "val_bpb": val_bpb,
                                  "params_sha256": self.last_hash})
        logger.info("outer step %d: loss %.4f, %.0f tokens/s%s", self.outer_step, fields["loss"],
                    fields["tokens_per_s"], f", val bpb {val_bpb:.4f}" if val_bpb is not None else "")

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        try:
            run = self._join()
        except PlanRefused as exc:
            logger.error("%s", exc)
            return EXIT_DOES_NOT_FIT
        self.run_config = run
        join = self.client.join_response
        self.heartbeat = Heartbeat(self.client, interval_s=join.heartbeat_interval_s).start()
        try:
            self._build(run)
            self._connect(run)
            self._restore(int(join.current_outer_step))
            done = 0
            while not self.stop.is_set():
                if self.options.max_outer_steps is not None and done >= self.options.max_outer_steps:
                    break
                period = self._inner_period(run)
                if period is None:
                    logger.info("the curriculum has no data left: the run is finished")
                    break
                if self.stop.is_set():
                    break
                if self._outer_round():
                    done += 1
                    self._after_round(run, *period)
            return EXIT_OK
        finally:
            self.close()

    def close(self) -> None:
        """Release leases at their resume positions, leave, and stop every background part."""
        if self.feed is not None:
            try:
                self.feed.release()
            except Exception as exc:
                logger.warning("could not release leases (they expire at the coordinator): %s", exc)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        try:
            self.client.leave("stopped" if self.stop.is_set() else "done")
        except Exception as exc:
            logger.warning("could not say goodbye to the coordinator: %s", exc)
        for part in (self.state_sync, self.averager, self.transport):
            if part is not None:
                try:
                    part.shutdown()
                except Exception as exc:
                    logger.warning("shutdown of %s failed: %s", type(part).__name__, exc)
        self.metrics.close()
        self.client.close()

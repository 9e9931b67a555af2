# SPDX-License-Identifier: AGPL-3.0-or-later
"""Phase 1 of a peer: join the run, build the training parts, connect to the other peers.

Each step returns a complete object (:mod:`peer.parts`); the node calls them in order and hands what
exists to the leave phase if a later one fails.

1. :func:`join_run` — Join at the coordinator (run config, DHT bootstrap addresses, current outer step)
   and plan this device's memory (the node refuses with the planner's message when it does not fit).
2. :func:`build_training` — the seeded model (every peer initializes the same θ_0), inner and outer
   optimizers, data feed, codec, aggregation rule, validation texts, checkpoint store.
3. :func:`connect_network` — credential, admitted-only DHT, averager and state sync
   (:func:`peer.accountability.open_trusted_averaging`) and the round barrier.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import psutil
import torch

from lila_codec import get_codec
from lila_data import iter_validation_texts, load_tokenizer
from lila_model.model import LilaLM
from lila_net.aggregation import aggregator_for
from lila_net.config import loads_run_config, model_stages
from lila_net.dht.keys import run_dht_id
from lila_net.proto import coordinator_pb2 as pb

from .accountability import open_trusted_averaging
from .averaging.config import AveragingConfig, StateSyncConfig
from .checkpoints import CheckpointStore
from .coordinator_client import CoordinatorClient
from .data_feed import DataFeed
from .growth import max_numel, stage_numels
from .hardware import detect_hardware
from .inner import InnerTrainer
from .logs import PeerContext
from .metrics import PeerMetrics
from .network_view import NetworkView
from .options import PeerOptions
from .outer import OuterOptimizer, flatten_parameters
from .parts import Joined, Network, Training
from .plan import make_plan
from .reachability import DIRECT, check_reachability
from .round_sync import RoundSync
from .sync import DONOR_ANNOUNCE_PERIOD_S, IDLE_POLL_S

logger = logging.getLogger(__name__)

PROGRESS_REPORT_INTERVAL_S = 1.0  # see peer.data_feed: reports of trained progress, at most this often per lease


def join_run(options: PeerOptions, *, client: CoordinatorClient, metrics: PeerMetrics,
             log_context: PeerContext) -> Joined:
    """Join the run and plan this device's memory (``Joined.plan.fits`` says whether the model fits)."""
    hardware = detect_hardware(options.device)
    metrics_address = ""
    if options.metrics_port is not None:
        port = metrics.serve(host=options.metrics_host, port=options.metrics_port)
        metrics_address = f"{options.metrics_host}:{port}"
        logger.info("metrics on http://%s/metrics", metrics_address)
    response = client.join(
        join_token=options.token, peer_name=options.name or socket.gethostname(),
        device_type=hardware.device, device_name=hardware.name, memory_bytes=hardware.memory_bytes,
        cpu_cores=psutil.cpu_count() or 1, metrics_address=metrics_address,
    )
    log_context.peer_id = response.peer_id
    run = loads_run_config(response.run_config_toml, origin="the coordinator's run config")
    logger.info("joined run %s as %s (outer step %d)", run.run.name, response.peer_id, response.current_outer_step)
    stages = model_stages(run)
    largest = stages[-1].config if len(stages) > 1 else None  # a staged run must fit its last (largest) shape
    plan = make_plan(run.model.preset, hardware, batch_size=run.diloco.batch_size, seq_len=run.curriculum.max_seq_len,
                     variant=run.model.variant, config=largest)
    logger.info("memory plan:\n%s", plan.render())
    return Joined(run=run, response=response, hardware=hardware, plan=plan)


def build_training(options: PeerOptions, joined: Joined, *, client: CoordinatorClient) -> Training:
    """The model and everything that trains it, as the run and the memory plan say."""
    run, plan = joined.run, joined.plan
    if options.threads:
        torch.set_num_threads(options.threads)
    tokenizer = load_tokenizer(run.data.tokenizer)
    stages = model_stages(run, vocab_size=tokenizer.vocab_size, activation_checkpointing=plan.activation_checkpointing,
                          mixed_precision=plan.dtype == "bf16")
    torch.manual_seed(run.run.seed)  # every peer initializes the same θ_0 (of the first model stage)
    model = LilaLM(stages[0].config)
    device = torch.device(joined.hardware.device)
    model.to(device)
    diloco = run.diloco
    source = next(iter(run.data.sources.values()))
    return Training(
        tokenizer=tokenizer,
        model=model,
        device=device,
        outer=OuterOptimizer(flatten_parameters(model), lr=diloco.outer_lr, momentum=diloco.outer_momentum,
                             nesterov=diloco.nesterov),
        trainer=InnerTrainer(model, device=device, lr=run.curriculum.schedule.peak_lr,
                             weight_decay=diloco.weight_decay, grad_clip=diloco.grad_clip,
                             micro_batch=plan.micro_batch, dtype=plan.dtype),
        feed=DataFeed(client, tokenizer=tokenizer, batch_size=diloco.batch_size,
                      validation_fraction=run.data.validation_fraction,
                      report_interval_s=PROGRESS_REPORT_INTERVAL_S),
        codec=get_codec(run.codec.name, **run.codec.options()),
        aggregator=aggregator_for(run.trust),
        val_texts=list(iter_validation_texts(source, fraction=run.data.validation_fraction,
                                             max_docs=run.data.validation_max_docs)),
        store=CheckpointStore(options.workdir / "checkpoints", keep=options.keep_checkpoints),
        model_stages=stages,
        stage_numels=stage_numels(stages),
    )


def on_heartbeat(network: Network) -> Callable[[pb.HeartbeatResponse], None]:
    """What a heartbeat answer updates: the ban list of the averaging layer and the coordinator's step and
    hash (:class:`peer.network_view.NetworkView`) the round barrier and the state download trust."""
    def handle(response: pb.HeartbeatResponse) -> None:
        network.round_sync.view.on_reply(response)
        network.trust.on_heartbeat(response)
    return handle


def connect_network(options: PeerOptions, joined: Joined, training: Training, *,
                    client: CoordinatorClient, metrics: PeerMetrics) -> Network:
    """Credential, admitted-only DHT, averager, state sync and the round barrier."""
    run = joined.run
    run_id = run_dht_id(run.run.name)
    reachability = check_reachability(client, host=options.host, port=options.port, announce=options.announce,
                                      client_mode=options.client_mode, observed_host=joined.response.observed_host)
    if reachability.mode == DIRECT:
        logger.info("reachable directly at %s: %s", ", ".join(reachability.announce_maddrs), reachability.detail)
    else:
        logger.warning("%s: taking part as a %s peer (%s)", "not reachable from the internet"
                       if reachability.relayed else "client mode", reachability.mode, reachability.detail)
    trust = open_trusted_averaging(
        client, run_name=run.run.name, run_id=run_id, initial_peers=list(joined.response.dht_initial_peers),
        reachability=reachability, max_numel=max_numel(training),
        config=AveragingConfig.for_run(run.diloco),
        state_config=StateSyncConfig(announce_period=DONOR_ANNOUNCE_PERIOD_S))
    wait = options.straggler_wait_s
    view = NetworkView()
    view.on_reply(joined.response)  # then every heartbeat answer (peer.node: on_heartbeat)
    round_sync = RoundSync(trust.transport, trust.state_sync, run_id=run_id,
                           straggler_wait_s=run.diloco.averaging_timeout_s if wait is None else wait,
                           idle_ttl_s=DONOR_ANNOUNCE_PERIOD_S + IDLE_POLL_S * 2, view=view,
                           report_claim=client.report_claim)
    logger.info("averaging as libp2p peer %s", trust.transport.peer_id)
    metrics.reachability.labels(mode=reachability.mode).set(1)
    return Network(trust=trust, round_sync=round_sync, reachability=reachability)

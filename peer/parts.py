# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a running peer holds, built phase by phase (:mod:`peer.setup`): every field exists from the moment
its object is constructed, so nothing downstream checks for a part that is not there yet.

- :class:`Joined` — the coordinator's answer to Join and what it implies for this device (run config,
  hardware, memory plan);
- :class:`Training` — the model, the inner and outer optimizers, the data feed, the codec and aggregation
  rule, validation texts, the checkpoint store;
- :class:`Network` — the averaging layer (credentials, DHT, averager, state sync) and the round barrier;
- :class:`Progress` — what changes as the peer trains: its outer step and parameter hash, the
  error-feedback residual, token counts, timings; :class:`Period` — one inner period's work;
- :class:`Peer` — all of the above plus the services every phase uses (coordinator client, heartbeat,
  metrics, event diary, progress bar, stop flag).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from lila_codec.base import Codec
from lila_data.tokenizer import LilaTokenizer
from lila_model.model import LilaLM
from lila_net.aggregation import Aggregator
from lila_net.config import ModelStage, RunConfig
from lila_net.proto import coordinator_pb2 as pb

from .accountability import TrustedAveraging
from .averaging.averager import Averager
from .averaging.state_sync import StateSync
from .averaging.transport import Transport
from .checkpoints import CheckpointStore
from .coordinator_client import CoordinatorClient
from .data_feed import DataFeed
from .events import EventLog, PhaseTimer
from .hardware import Hardware
from .heartbeat import Heartbeat
from .inner import InnerTrainer
from .link import LinkMeter
from .metrics import PeerMetrics
from .options import PeerOptions
from .outer import OuterOptimizer
from .plan import MemoryPlan
from .progress import ProgressBar
from .reachability import Reachability
from .round_sync import RoundSync


@dataclass(frozen=True, kw_only=True)
class Joined:
    """The run this peer joined (``response``: the coordinator's JoinResponse) and its plan for this device."""

    run: RunConfig
    response: pb.JoinResponse
    hardware: Hardware
    plan: MemoryPlan


@dataclass(kw_only=True)
class Training:
    """The model and everything that trains it; ``outer`` holds θ_global and the outer momentum.

    ``model_stages``: the run's model shapes (:func:`lila_net.config.model_stages`, with this peer's vocab
    and numerics), ``stage_numels`` their trainable parameters; ``model_stage``: the one held now. A growth
    or a state of another shape replaces ``model``, ``trainer``, ``outer`` and ``model_stage``
    (:mod:`peer.growth`); nothing else may keep references to them across rounds."""

    tokenizer: LilaTokenizer
    model: LilaLM
    device: torch.device
    outer: OuterOptimizer
    trainer: InnerTrainer
    feed: DataFeed
    codec: Codec
    aggregator: Aggregator
    val_texts: list[str]
    store: CheckpointStore
    model_stages: tuple[ModelStage, ...]
    stage_numels: tuple[int, ...]
    model_stage: int = 0


@dataclass(frozen=True, kw_only=True)
class Network:
    """The averaging layer and the round barrier of a connected peer."""

    trust: TrustedAveraging
    reachability: Reachability
    round_sync: RoundSync
    link: LinkMeter = field(default_factory=LinkMeter)

    @property
    def transport(self) -> Transport:
        return self.trust.transport

    @property
    def averager(self) -> Averager:
        return self.trust.averager

    @property
    def state_sync(self) -> StateSync:
        return self.trust.state_sync


@dataclass(frozen=True)
class Period:
    """One inner period: ``tokens`` trained in ``seconds`` (0 tokens: no data was available), of which
    ``step_seconds`` inside the optimizer steps themselves (the rest: data, metrics, the status call)."""

    tokens: int
    seconds: float
    loss: float
    step_seconds: float = 0.0


@dataclass(kw_only=True)
class Progress:
    """What changes while the peer trains.

    ``outer_step`` / ``params_hash``: the global parameters held now; ``group_size``: how many peers
    averaged in the round that produced them (0: they came from a checkpoint, a download or θ_0).
    ``majority``: (outer step, sha256) of the parameters most peers hold when the coordinator said this
    peer's differ — :func:`peer.sync.follow_majority` re-syncs to them before the next period and clears
    it. ``residual``: the error-feedback residual (what earlier rounds' codec dropped). ``global_tokens`` / ``active_peers``: the run's
    progress as last read from the coordinator (the learning-rate schedule). ``tokens_trained``: committed
    batches since the process started (credited at the coordinator). ``phases``: timings of the work after
    the current round; ``round_seconds``: how long the last averaging round took. ``group_formed``: when
    (``time.monotonic``) the last round's group formed, which time-boxed periods count from (None: no round
    since the period began, :func:`peer.rounds.period_deadline`); ``told_slow``: this peer was told it cannot finish a step within the run's period."""

    residual: torch.Tensor
    outer_step: int = 0
    params_hash: str = ""
    group_size: int = 0
    majority: tuple[int, str] | None = None
    global_tokens: int = 0
    active_peers: int = 1
    tokens_trained: int = 0
    first_step_done: bool = False
    round_seconds: float = 0.0
    group_formed: float | None = None
    told_slow: bool = False
    phases: PhaseTimer = field(default_factory=PhaseTimer)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class Peer:
    """A joined, built and connected peer: what every phase of the loop works on."""

    options: PeerOptions
    stop: threading.Event
    client: CoordinatorClient
    heartbeat: Heartbeat
    metrics: PeerMetrics
    events: EventLog
    bar: ProgressBar
    joined: Joined
    training: Training
    network: Network
    progress: Progress

    @property
    def run(self) -> RunConfig:
        return self.joined.run

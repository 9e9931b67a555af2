# SPDX-License-Identifier: AGPL-3.0-or-later
"""Model growth on a peer: the curriculum's larger model shapes, applied at the outer step the coordinator
announced (:mod:`lila_net.config.model_stages`, :mod:`coordinator.core`).

The run config lists the model stages (the ``[model]`` preset, then one shape per curriculum stage with a
``growth``); the coordinator's Join and Heartbeat answers say at which outer step each announced growth
applies (``growth_outer_steps``, kept by :class:`peer.network_view.NetworkView`). The state of outer step
``s`` has model stage :func:`lila_net.config.stage_at_step` (growths at or before ``s``). Three ways a
peer gets there:

* :func:`grow_after_round` — right after the round that reaches a growth step (:func:`peer.rounds.apply_round`,
  before the hash check), every peer applies the same deterministic operator (:mod:`lila_model.growth`) to
  θ_global, the outer momentum, the error-feedback residual and the inner AdamW moments, and rebuilds the
  model, the inner trainer and the outer optimizer for the new shape; the grown state is what the peer then
  verifies, publishes, reports and checkpoints as the state of that step, so every peer logs the same hash;
* :func:`ensure_stage` — a state of another shape is about to be loaded (a checkpoint written after a
  growth, a download across a boundary this peer did not take part in): fresh parts of that shape, which
  the load then fills (the inner AdamW state starts afresh, the residual at zero);
* :func:`peer.sync.catch_up_growth` — before a period: this peer holds a step whose shape should be larger than the
  one it has (the announcement reached it too late): it re-syncs to the network's state.

Every donor serves ``model_stage`` with its state and every checkpoint records it, so a receiver builds
the right shape from the run config it already holds. The averager accepts vectors of the largest stage
(:func:`max_numel`).
"""

from __future__ import annotations

import logging
import time

import torch

from lila_model.growth import grow_adamw_state, grow_flat, grow_model
from lila_model.model import LilaLM
from lila_net.config import ModelStage, stage_at_step

from .inner import InnerTrainer
from .outer import OuterOptimizer, flatten_parameters, load_flat_parameters
from .parts import Peer, Training

logger = logging.getLogger(__name__)


def stage_numels(stages: tuple[ModelStage, ...]) -> tuple[int, ...]:
    """Trainable parameters of every model stage (the flat state's length at that stage)."""
    return tuple(stage.num_params() for stage in stages)


def max_numel(training: Training) -> int:
    """The longest flat vector this run ever averages: its largest model stage's."""
    return max(training.stage_numels)


def stage_of(peer: Peer, outer_step: int) -> int:
    """The model stage of the network's state at ``outer_step`` (by the growths announced so far)."""
    return stage_at_step(peer.network.round_sync.view.growth_steps, outer_step)


def _new_trainer(peer: Peer, model: LilaLM, old: InnerTrainer) -> InnerTrainer:
    diloco = peer.run.diloco
    return InnerTrainer(model, device=old.device, lr=old.optimizer.param_groups[0]["lr"],
                        weight_decay=diloco.weight_decay, grad_clip=old.grad_clip, micro_batch=old.micro_batch,
                        dtype=old.dtype)


def _new_outer(peer: Peer, global_params: torch.Tensor) -> OuterOptimizer:
    diloco = peer.run.diloco
    return OuterOptimizer(global_params, lr=diloco.outer_lr, momentum=diloco.outer_momentum, nesterov=diloco.nesterov)


def ensure_stage(peer: Peer, stage: int) -> bool:
    """Fresh model, inner trainer and outer optimizer of model stage ``stage`` when the peer holds another
    (the caller loads the state into them); True when it rebuilt. The outer step count is kept."""
    training = peer.training
    if stage == training.model_stage:
        return False
    if not 0 <= stage < len(training.model_stages):
        raise ValueError(f"model stage {stage} is not one of this run's {len(training.model_stages)} stages: "
                         "the donor or checkpoint belongs to another run config")
    config = training.model_stages[stage].config
    model = LilaLM(config).to(training.device)  # its values are replaced by the state loaded next
    step_count = training.outer.step_count
    training.trainer = _new_trainer(peer, model, training.trainer)
    training.outer = _new_outer(peer, flatten_parameters(model))
    training.outer.step_count = step_count
    training.model, training.model_stage = model, stage
    peer.progress.residual = torch.zeros_like(training.outer.global_params)
    logger.info("rebuilt the model as model stage %d (%s, %d parameters) to load a state of that shape", stage,
                training.model_stages[stage].label, training.outer.global_params.numel())
    return True


def grow_once(peer: Peer) -> None:
    """Grow everything the peer holds by one model stage (the next stage's ``growth``): θ_global (loaded in
    the model first) by :func:`lila_model.growth.grow_model`, outer momentum and residual by
    :func:`~lila_model.growth.grow_flat`, the AdamW moments by :func:`~lila_model.growth.grow_adamw_state`
    (afresh when the trainer has not stepped every parameter yet)."""
    training, progress = peer.training, peer.progress
    target = training.model_stages[training.model_stage + 1]
    spec = target.growth
    if spec is None:
        raise RuntimeError(f"model stage {target.index} has no growth: lila_net.config.model_stages is broken")
    old_model, old_trainer, old_outer = training.model, training.trainer, training.outer
    load_flat_parameters(old_model, old_outer.global_params)
    model = grow_model(old_model, spec)
    outer = _new_outer(peer, flatten_parameters(model))
    outer.momentum_buffer = grow_flat(old_outer.momentum_buffer, old_model, spec, power=1)
    outer.step_count = old_outer.step_count
    residual = grow_flat(progress.residual, old_model, spec, power=1)
    trainer = _new_trainer(peer, model, old_trainer)
    try:
        grow_adamw_state(old_trainer.optimizer, old_model, trainer.optimizer, model, spec)
    except ValueError as exc:  # no inner step since the last rebuild: nothing to grow
        logger.info("inner optimizer state starts afresh after the growth: %s", exc)
    if model.config != target.config:
        raise RuntimeError(f"growth made {model.config} but the run config's stage {target.index} is "
                           f"{target.config}")
    training.model, training.trainer, training.outer = model, trainer, outer
    training.model_stage = target.index
    progress.residual = residual


def grow_after_round(peer: Peer, round_index: int) -> bool:
    """Apply every growth announced for ``round_index`` or earlier that this peer has not applied (called
    right after the round's outer step, with θ_global in the model); True when it grew."""
    target = stage_of(peer, round_index)
    if target <= peer.training.model_stage:
        return False
    training, progress = peer.training, peer.progress
    before, old_numel, started = training.model_stage, training.outer.global_params.numel(), time.perf_counter()
    while training.model_stage < target:
        grow_once(peer)
    progress.params_hash = training.outer.params_hash()
    seconds = time.perf_counter() - started
    stage = training.model_stages[target]
    peer.events.write("growth", outer_step=round_index, from_stage=before, to_stage=target,
                      params_before=old_numel, params_after=training.outer.global_params.numel(),
                      params_sha256=progress.params_hash, seconds=round(seconds, 4))
    logger.info("outer step %d: grew the model from stage %d to %d (%s): %d -> %d parameters in %.2f s, "
                "sha256 %s…", round_index, before, target, stage.label, old_numel,
                training.outer.global_params.numel(), seconds, progress.params_hash[:12])
    return True

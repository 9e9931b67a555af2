# SPDX-License-Identifier: AGPL-3.0-or-later
"""A peer's growth step (peer.growth) on real parts — the model, the inner AdamW trainer, the outer optimizer,
the diary — of a staged run (debug model, stage 1 grows it ×2 in depth with the function-preserving ``zero``
operator): two peers that applied the same round grow to bitwise-identical states, the grown θ_global gives
the same logits, momentum, residual and AdamW moments are grown like their parameters, and a state of
another shape gets fresh parts of that shape."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import SimpleNamespace

import pytest
import torch

from lila_model.growth import grow_flat, logit_change
from lila_model.model import LilaLM
from lila_net.config import model_stages
from lila_run.harness import small_run
from peer.averaging import Donor, DownloadResult, StateSnapshot
from peer.events import EventLog, read_events
from peer.growth import ensure_stage, grow_after_round, max_numel, stage_numels
from peer.inner import InnerTrainer
from peer.link import LinkMeter
from peer.metrics import PeerMetrics
from peer.network_view import NetworkView
from peer.outer import OuterOptimizer, flatten_parameters, load_flat_parameters, params_sha256
from peer.parts import Progress
from peer.sync import download_state

VOCAB = 64
GROWTH_STEP = 3
RUN = small_run(name="grow", model={"preset": "debug"},
                stages=[{"name": "small", "tokens": 1000, "seq_len": 16},
                        {"name": "deep", "tokens": 1000, "seq_len": 16, "growth": {"operator": "zero", "factor": 2}}])


def _peer(tmp_path, name: str):
    """A peer after one inner step and outer step 2, its residual non-zero; the coordinator announced the
    growth for outer step GROWTH_STEP."""
    stages = model_stages(RUN, vocab_size=VOCAB, block_size=32, mixed_precision=False)
    torch.manual_seed(0)
    model = LilaLM(stages[0].config)
    trainer = InnerTrainer(model, device="cpu", lr=1e-3, weight_decay=0.1, grad_clip=1.0, micro_batch=2)
    outer = OuterOptimizer(flatten_parameters(model), lr=0.7, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, 17), generator=gen)
    trainer.step(tokens[:, :-1], tokens[:, 1:])
    outer.step(outer.pseudo_gradient(flatten_parameters(model)))
    outer.step(outer.pseudo_gradient(flatten_parameters(model)))
    load_flat_parameters(model, outer.global_params)
    residual = 0.01 * torch.randn(outer.global_params.shape, generator=gen)
    view = NetworkView()
    view.growth_steps = (GROWTH_STEP,)
    training = SimpleNamespace(model=model, trainer=trainer, outer=outer, device=torch.device("cpu"),
                               model_stages=stages, stage_numels=stage_numels(stages), model_stage=0)
    return SimpleNamespace(run=RUN, training=training, stop=threading.Event(),
                           progress=Progress(residual=residual, outer_step=2),
                           network=SimpleNamespace(round_sync=SimpleNamespace(view=view)),
                           events=EventLog(tmp_path / f"{name}.jsonl"))


def test_two_peers_grow_at_the_announced_step_to_identical_function_preserving_states(tmp_path) -> None:
    a, b = _peer(tmp_path, "a"), _peer(tmp_path, "b")
    old_model = a.training.model
    old_params = a.training.outer.global_params.clone()
    old_momentum, old_residual = a.training.outer.momentum_buffer.clone(), a.progress.residual.clone()
    assert grow_after_round(a, GROWTH_STEP - 1) is False and a.training.model_stage == 0

    assert grow_after_round(a, GROWTH_STEP) is True and grow_after_round(b, GROWTH_STEP) is True
    training = a.training
    assert (training.model_stage, training.model.config.n_layers, training.outer.step_count) == (1, 8, 2)
    assert training.outer.global_params.numel() == training.stage_numels[1] == max_numel(training)
    assert a.progress.params_hash == b.progress.params_hash == params_sha256(training.outer.global_params)
    assert torch.equal(training.outer.global_params, flatten_parameters(training.model))
    assert torch.equal(training.outer.momentum_buffer, grow_flat(old_momentum, old_model, RUN.curriculum.stages[1].growth))
    assert torch.equal(a.progress.residual, grow_flat(old_residual, old_model, RUN.curriculum.stages[1].growth))
    load_flat_parameters(old_model, old_params)
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    assert logit_change(old_model, training.model, idx) < 1e-5  # `zero` adds blocks that add exactly 0
    states = training.trainer.optimizer.state
    assert len(states) == len(list(training.model.parameters()))
    assert {int(s["step"]) for s in states.values()} == {1}
    assert grow_after_round(a, GROWTH_STEP + 1) is False  # grown once

    tokens = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(3))
    training.trainer.step(tokens[:, :-1], tokens[:, 1:])  # the grown model trains with the grown moments
    assert training.outer.pseudo_gradient(flatten_parameters(training.model)).shape == (training.stage_numels[1],)
    a.events.close()
    (line,) = read_events(tmp_path / "a.jsonl", "growth")
    assert (line["outer_step"], line["from_stage"], line["to_stage"]) == (GROWTH_STEP, 0, 1)
    assert (line["params_before"], line["params_after"]) == tuple(training.stage_numels)
    assert line["params_sha256"] == a.progress.params_hash


def test_a_state_of_another_shape_gets_fresh_parts_of_that_shape(tmp_path) -> None:
    peer = _peer(tmp_path, "p")
    assert ensure_stage(peer, 0) is False
    assert ensure_stage(peer, 1) is True
    training = peer.training
    numel = training.stage_numels[1]
    assert (training.model_stage, training.model.config.n_layers, training.outer.step_count) == (1, 8, 2)
    assert training.outer.global_params.shape == peer.progress.residual.shape == (numel,)
    assert float(peer.progress.residual.abs().sum()) == 0.0 and len(training.trainer.optimizer.state) == 0
    with pytest.raises(ValueError, match="model stage 2 is not one of this run's 2 stages"):
        ensure_stage(peer, 2)


class GrownDonor:
    """One announced donor serving ``state`` (a grown state of outer step ``step``) — a stand-in for the DHT
    and the state download; what is tested is the peer's side: the shape it asks for and how it loads."""

    def __init__(self, step: int, state: dict[str, torch.Tensor], metadata: dict) -> None:
        self.step, self.state, self.metadata = step, state, metadata
        self.asked_shapes: list[dict] = []
        self.config = SimpleNamespace(total_timeout=5.0)

    def donors(self, floor: int = -1) -> list[Donor]:
        return [Donor("QmGrown", self.step)]

    async def download_async(self, *, donors, expected_shapes) -> DownloadResult:
        self.asked_shapes.append(expected_shapes)
        snapshot = StateSnapshot(tensors={k: v.clone() for k, v in self.state.items()}, metadata=self.metadata)
        return DownloadResult(snapshot, donor=donors[0], bytes_received=1)

    def publish(self, snapshot: StateSnapshot) -> None:
        pass


def _submit(coro) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(asyncio.run(coro))
    return future


def test_a_peer_that_was_away_downloads_the_grown_state_across_the_boundary(tmp_path) -> None:
    grown = _peer(tmp_path, "grown")  # what the network holds: grown at GROWTH_STEP, then one more step
    grow_after_round(grown, GROWTH_STEP)
    grown.training.outer.step(torch.full_like(grown.training.outer.global_params, 1e-3))
    outer = grown.training.outer
    sha = params_sha256(outer.global_params)
    donor = GrownDonor(GROWTH_STEP + 1, {"global_params": outer.global_params, "momentum_buffer": outer.momentum_buffer},
                       {"outer_step": GROWTH_STEP + 1, "params_sha256": sha, "model_stage": 1})
    away = _peer(tmp_path, "away")  # still at outer step 2, pre-growth
    view = away.network.round_sync.view
    view.update(step=GROWTH_STEP + 1, sha256=sha)
    away.heartbeat, away.metrics = SimpleNamespace(phase="training"), PeerMetrics()
    away.network = SimpleNamespace(state_sync=donor, transport=SimpleNamespace(submit=_submit), link=LinkMeter(),
                                   round_sync=SimpleNamespace(view=view, donors=donor.donors))
    assert download_state(away, source="resync", min_step=GROWTH_STEP + 1) is True
    numel = away.training.stage_numels[1]
    assert donor.asked_shapes == [{"global_params": (numel,), "momentum_buffer": (numel,)}]
    training = away.training
    assert (training.model_stage, training.model.config.n_layers, away.progress.outer_step) == (1, 8, GROWTH_STEP + 1)
    assert away.progress.params_hash == sha and torch.equal(training.outer.momentum_buffer, outer.momentum_buffer)
    assert away.progress.residual.shape == (numel,) and float(away.progress.residual.abs().sum()) == 0.0

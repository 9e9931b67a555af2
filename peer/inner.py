# SPDX-License-Identifier: AGPL-3.0-or-later
"""The inner loop: AdamW steps on local batches, with micro-batching and the precision of the memory plan.

One :meth:`InnerTrainer.step` trains one batch of ``micro_batch × grad_accum`` sequences. ``dtype`` is
``bf16`` (autocast on CUDA), ``fp16`` (autocast with dynamic loss scaling, for GPUs without bf16) or
``fp32``. Master weights and AdamW state stay float32 in every case.

Tuning: ``lr`` comes from the curriculum's schedule every step (:meth:`set_lr`, at the run position
:func:`schedule_position` estimates); ``grad_clip`` 1.0 is safe; a clip far below 1 slows learning, none
at all lets a bad batch blow the inner run up.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

ADAM_BETAS = (0.9, 0.95)


def schedule_position(global_tokens: int, own_tokens: int, peers: int) -> int:
    """The run's position in tokens (what the curriculum's lr schedule is a function of) after this peer
    trained ``own_tokens`` of its inner period, which began when the run had ``global_tokens``.

    The other ``peers - 1`` active peers train their periods at the same time, so the run advances about
    ``peers`` times as fast as this peer. Counting only its own tokens, a peer would lag the schedule by
    ``(peers - 1) / peers`` of a period: a slower warm-up, and a final decay that never reaches
    ``min_lr_ratio`` — unlike synchronous training with the same global batch, where step ``s`` is at
    ``s × peers × batch`` tokens. Peers of different speeds make this an estimate; the next period starts
    from the coordinator's credited count again, so the error never accumulates.
    """
    if peers < 1 or global_tokens < 0 or own_tokens < 0:
        raise ValueError(f"peers={peers} must be >= 1 and token counts >= 0 "
                         f"(global_tokens={global_tokens}, own_tokens={own_tokens})")
    return global_tokens + own_tokens * peers


@dataclass(frozen=True)
class StepStats:
    """What one inner step did: losses are means over the batch's tokens."""

    loss: float
    ce_loss: float
    geo_loss: float
    tokens: int
    seconds: float


class InnerTrainer:
    """AdamW on a model, one batch per :meth:`step`."""

    def __init__(self, model: nn.Module, *, device: torch.device | str, lr: float, weight_decay: float,
                 grad_clip: float, micro_batch: int, dtype: str = "fp32") -> None:
        if dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"dtype={dtype!r}: use bf16, fp16 or fp32")
        if micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch}: must be >= 1")
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.micro_batch = micro_batch
        self.grad_clip = grad_clip
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=ADAM_BETAS,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == "fp16")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _autocast(self):
        if self.dtype == "fp32" or self.device.type == "cpu":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepStats:
        """One optimizer step on ``inputs``/``targets`` (LongTensor[B, T]), split into micro-batches."""
        start = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n_rows = inputs.shape[0]
        total = ce_total = geo_total = 0.0
        for lo in range(0, n_rows, self.micro_batch):
            x = inputs[lo:lo + self.micro_batch].to(self.device, non_blocking=True)
            y = targets[lo:lo + self.micro_batch].to(self.device, non_blocking=True)
            share = x.shape[0] / n_rows
            with self._autocast():
                out = self.model(x, y)
            self.scaler.scale(out.loss * share).backward()
            total += float(out.loss.detach()) * share
            ce_total += float(out.ce_loss.detach()) * share
            geo_total += float(out.geo_loss.detach()) * share if out.geo_loss is not None else 0.0
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepStats(loss=total, ce_loss=ce_total, geo_loss=geo_total, tokens=int(inputs.numel()),
                         seconds=time.perf_counter() - start)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

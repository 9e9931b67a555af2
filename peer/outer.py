# SPDX-License-Identifier: AGPL-3.0-or-later
"""DiLoCo's outer state and optimizer: the global parameters every peer agrees on, and the Nesterov step.

After H inner steps a peer's pseudo-gradient is ``Δ = θ_global − θ_local`` (it points uphill, like a
gradient). The peers average their Δ, then every peer applies the same outer step::

    m ← μ·m + Δ̄
    θ_global ← θ_global − lr · (Δ̄ + μ·m)      (Nesterov; plain momentum uses m instead)

and restarts its inner training from ``θ_global``. The step runs on the CPU in float32 with one rounding
per operation (no fused multiply-add), so peers that decode the same averaged bytes end with bitwise
identical global parameters on any machine; :meth:`OuterOptimizer.params_hash` lets them check it.

Tuning: ``lr`` 0.7 and ``momentum`` 0.9 are the DiLoCo paper's values. ``lr`` = 1 with ``momentum`` = 0
is plain parameter averaging; ``lr`` > 1 with high momentum tends to diverge after a few rounds.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters DiLoCo averages, in a fixed order (module registration order)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one float32 CPU vector (a copy)."""
    params = [p.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for _, p in trainable_parameters(model)]
    return torch.cat(params) if params else torch.zeros(0)


@torch.no_grad()
def load_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a vector made by :func:`flatten_parameters` back into the model's parameters."""
    params = trainable_parameters(model)
    total = sum(p.numel() for _, p in params)
    if flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} values but the model has {total} trainable parameters")
    offset = 0
    for _, p in params:
        n = p.numel()
        p.copy_(flat[offset:offset + n].view_as(p))  # [n] -> p.shape
        offset += n


def params_sha256(params: torch.Tensor) -> str:
    """sha256 (hex) of a flat parameter vector's float32 bytes: how peers, the coordinator and a state
    download compare parameters."""
    flat = params.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


class OuterOptimizer:
    """The global parameters, the outer momentum, and the Nesterov step that updates them."""

    def __init__(self, global_params: torch.Tensor, *, lr: float, momentum: float, nesterov: bool = True) -> None:
        if global_params.dim() != 1:
            raise ValueError("global_params must be a flat vector (see flatten_parameters)")
        if not 0 < lr <= 2 or not 0 <= momentum < 1:
            raise ValueError(f"outer lr={lr} must be in (0, 2] and momentum={momentum} in [0, 1)")
        self.global_params = global_params.detach().to(device="cpu", dtype=torch.float32).clone()
        self.momentum_buffer = torch.zeros_like(self.global_params)
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.step_count = 0

    def pseudo_gradient(self, local_params: torch.Tensor) -> torch.Tensor:
        """Δ = θ_global − θ_local for this peer's current local parameters (flat, float32)."""
        return self.global_params - local_params.to(device="cpu", dtype=torch.float32)

    @torch.no_grad()
    def step(self, averaged_delta: torch.Tensor) -> None:
        """Apply one outer step with the group's averaged pseudo-gradient."""
        if averaged_delta.shape != self.global_params.shape:
            raise ValueError(f"averaged delta has shape {tuple(averaged_delta.shape)}, "
                             f"expected {tuple(self.global_params.shape)}")
        delta = averaged_delta.to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(delta).all():
            raise ValueError("averaged pseudo-gradient has non-finite values; refusing the outer step")
        # Separate multiply and add (no alpha=, no addcmul) so every platform rounds identically.
        self.momentum_buffer.mul_(self.momentum)
        self.momentum_buffer.add_(delta)
        if self.nesterov:
            update = self.momentum_buffer * self.momentum
            update.add_(delta)
        else:
            update = self.momentum_buffer.clone()
        update.mul_(self.lr)
        self.global_params.sub_(update)
        self.step_count += 1

    def params_hash(self) -> str:
        """sha256 of the global parameters' bytes: equal on every peer after a good round."""
        return params_sha256(self.global_params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "global_params": self.global_params,
            "momentum_buffer": self.momentum_buffer,
            "step_count": torch.tensor(self.step_count, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = state["global_params"]
        if params.shape != self.global_params.shape or state["momentum_buffer"].shape != params.shape:
            raise ValueError(
                f"outer state has {params.numel()} parameters, this model has {self.global_params.numel()}: "
                "the donor trains a different model preset"
            )
        self.global_params = params.detach().to(dtype=torch.float32).clone()
        self.momentum_buffer = state["momentum_buffer"].detach().to(dtype=torch.float32).clone()
        self.step_count = int(state["step_count"])

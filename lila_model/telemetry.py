# SPDX-License-Identifier: AGPL-3.0-or-later
"""Weight telemetry: stable rank and condition number of every attention and MLP weight.

stable rank  ‖W‖²_F / ‖W‖²_2 = Σσᵢ² / σ²_max, between 1 (rank one) and rank(W); a sharp
             drop during training means the layer collapsed onto a few directions.
condition    σ_max / σ_min over the min(m, n) singular values; ``inf`` when W is singular.
             Very large values (≳1e4) flag near-degenerate maps.

These are the upstream "SR"/"CN" figures with sound definitions. They need one
``torch.linalg.svdvals`` per matrix (in float32 on the weight's device), so call
``layer_telemetry`` on demand (every few hundred steps), not every step. The fused qkv
weight is split into its q, k and v parts; frozen buffers (monster q/k maps) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lila_model.model import LilaLM


@dataclass(frozen=True)
class LayerStats:
    """Spectral figures of one weight matrix."""

    shape: tuple[int, int]
    stable_rank: float
    condition_number: float
    spectral_norm: float


def matrix_stats(weight: Tensor) -> LayerStats:
    """Stable rank, condition number and spectral norm of a 2-D weight."""
    if weight.dim() != 2:
        raise ValueError(f"matrix_stats needs a 2-D weight; got shape {tuple(weight.shape)}")
    sigma = torch.linalg.svdvals(weight.detach().float())  # descending
    top, bottom = float(sigma[0]), float(sigma[-1])
    frob2 = float((sigma * sigma).sum())
    stable_rank = frob2 / (top * top) if top > 0 else 0.0
    condition = top / bottom if bottom > 0 else float("inf")
    return LayerStats(tuple(weight.shape), stable_rank, condition, top)


def _named_weights(model: LilaLM) -> list[tuple[str, Tensor]]:
    weights: list[tuple[str, Tensor]] = []
    d = model.config.d_model
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}"
        attn = block.attn
        if hasattr(attn, "qkv"):
            q, k, v = attn.qkv.weight.split(d, dim=0)  # 3 × [d, d]
            weights += [(f"{prefix}.attn.q", q), (f"{prefix}.attn.k", k), (f"{prefix}.attn.v", v)]
        else:
            weights.append((f"{prefix}.attn.v", attn.v.weight))
        weights.append((f"{prefix}.attn.proj", attn.proj.weight))
        weights += [(f"{prefix}.mlp.fc", block.mlp.fc.weight), (f"{prefix}.mlp.proj", block.mlp.proj.weight)]
    return weights


@torch.no_grad()
def layer_telemetry(model: LilaLM) -> dict[str, LayerStats]:
    """``{"blocks.0.attn.q": LayerStats, …, "blocks.L.mlp.proj": …}`` for every attention/MLP weight."""
    model = getattr(model, "_orig_mod", model)
    return {name: matrix_stats(w) for name, w in _named_weights(model)}

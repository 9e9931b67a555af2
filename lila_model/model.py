# SPDX-License-Identifier: AGPL-3.0-or-later
"""LilaLM: a causal decoder-only transformer (nanoGPT style) with four variants.

Pre-norm blocks (LayerNorm → attention → residual, LayerNorm → MLP → residual), GELU MLP,
rotary position embeddings (``position="rope"``, default; no table, any length up to
``block_size``) or a learned position table (``position="learned"``), weight-tied output
head by default. The variant-specific parts live in attention.py (vanilla/e8/leech),
resonance.py (E8 branch, Leech loss) and monster.py.

Numerics: with ``mixed_precision`` the forward pass runs under bf16 autocast when the input
is on CUDA (fp32 on CPU); losses are always computed in fp32. ``activation_checkpointing``
recomputes each block in the backward pass. ``compile_model`` wraps ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lila_model.attention import CausalSelfAttention, E8Attention, KVCache, LeechAttention, rope_tables
from lila_model.config import LilaConfig
from lila_model.monster import MonsterAttention, phase_modulate
from lila_model.resonance import E8Resonance, leech_resonance_loss

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MIN_LOSS_WEIGHT = 1e-8


@dataclass
class LMOutput:
    """Result of ``LilaLM.forward``.

    ``logits`` [B, T, V] (or [B, 1, V] with ``last_logits_only``); ``loss`` = ce + λ_geo·geo,
    ``ce_loss`` and ``geo_loss`` (fp32 scalars; None without targets; geo is 0 for vanilla);
    ``hidden`` the final normalized hidden state [B, T, d] when requested.
    """

    logits: Tensor
    loss: Tensor | None = None
    ce_loss: Tensor | None = None
    geo_loss: Tensor | None = None
    hidden: Tensor | None = None


class MLP(nn.Module):
    def __init__(self, config: LilaConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_hidden, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


def make_attention(config: LilaConfig, layer_index: int) -> CausalSelfAttention:
    """The attention module of ``config.variant`` for one layer."""
    kinds = {"vanilla": CausalSelfAttention, "e8": E8Attention, "leech": LeechAttention, "monster": MonsterAttention}
    return kinds[config.variant](config, layer_index)


class Block(nn.Module):
    """One pre-norm transformer block; returns (x, geo loss of this block or None)."""

    def __init__(self, config: LilaConfig, layer_index: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        self.attn = make_attention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.resonance = E8Resonance(config) if config.variant == "e8" else None

    def forward(
        self, x: Tensor, rope: Tensor | None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        x = x + self.attn(self.ln_1(x), rope, cache)
        h = self.ln_2(x)
        x = x + self.mlp(h)
        geo = None
        if self.resonance is not None:
            branch, geo = self.resonance(h)
            x = x + branch
        return x, geo


class LilaLM(nn.Module):
    """The LILA language model. See the module docstring and ``LilaConfig``."""

    def __init__(self, config: LilaConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layers)])
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanoGPT init: N(0, init_std) weights, zero biases, residual projections scaled by 1/√(2L)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith("attn.proj") or name.endswith("mlp.proj")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the constant buffers (E8 roots, frozen monster maps).

        Needed after ``to_empty`` (meta-device construction); a no-op on their values otherwise.
        """
        for module in self.modules():
            if isinstance(module, (E8Attention, E8Resonance)):
                module.init_buffers()
            elif isinstance(module, MonsterAttention):
                module.init_frozen_maps()

    # ------------------------------------------------------------------ bookkeeping
    def num_params(self, *, non_embedding: bool = True) -> int:
        """Number of learned parameters; ``non_embedding`` excludes the token and position tables."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
        return total

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matrices (2-D and up) decay, vectors and scalars (norms, biases, scales) do not."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def output_weight(self) -> Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def iter_geometry_scales(self) -> Iterator[tuple[str, Tensor]]:
        """The learned geometric scales (E8 bias scales, E8 branch gains, Leech radii) by name."""
        for name, param in self.named_parameters():
            if name.endswith(("bias_scale", "resonance.strength", "log_radius")):
                yield name, param

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        loss_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        last_logits_only: bool = False,
    ) -> LMOutput:
        """Logits for idx [B, T] (and losses when ``targets`` [B, T] is given; −100 is ignored).

        ``loss_mask`` [B, T] weights each position's cross-entropy (0 drops it). ``cache``
        continues from (and extends) a KVCache; positions start at ``cache.length``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time] token ids; got shape {tuple(idx.shape)}")
        t = idx.size(1)
        start = cache.length if cache is not None else 0
        if start + t > self.config.block_size:
            raise ValueError(
                f"sequence of {start + t} positions exceeds block_size={self.config.block_size}; "
                "crop the context or build the model with a larger block_size"
            )
        use_amp = self.config.mixed_precision and idx.device.type == "cuda"
        # Only ever switch autocast on: a caller's own autocast context stays in charge otherwise.
        amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
        with amp:
            hidden, block_geo = self._trunk(idx, start, cache)
            head_in = hidden[:, -1:] if last_logits_only else hidden
            logits = F.linear(head_in, self.output_weight())  # [B, T, V]
        out = LMOutput(logits=logits, hidden=hidden if return_hidden else None)
        if targets is None:
            return out
        out.ce_loss = self._cross_entropy(logits, targets, loss_mask)
        out.geo_loss = self._geo_loss(hidden, block_geo)
        out.loss = out.ce_loss + self.config.lambda_geo * out.geo_loss
        return out

    def _trunk(self, idx: Tensor, start: int, cache: KVCache | None) -> tuple[Tensor, list[Tensor]]:
        """Final normalized hidden state [B, T, d] and the per-block geo losses."""
        t = idx.size(1)
        positions = torch.arange(start, start + t, device=idx.device)
        x = self.tok_emb(idx)  # [B, T, d]
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        if self.config.variant == "monster" and self.config.monster_alpha != 0.0:
            x = phase_modulate(x, positions, self.config.monster_alpha)
        x = self.drop(x)
        rope = None
        if self.config.position == "rope":
            rope = rope_tables(positions, self.config.head_dim, self.config.rope_base)
        geo: list[Tensor] = []
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute and cache is None:
                x, g = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x, g = block(x, rope, cache)
            if g is not None:
                geo.append(g)
        return self.ln_f(x), geo

    def _cross_entropy(self, logits: Tensor, targets: Tensor, loss_mask: Tensor | None) -> Tensor:
        if targets.shape != logits.shape[:2]:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape[:2])}; "
                "pass targets [B, T] aligned with idx (and do not use last_logits_only)"
            )
        per_token = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="none",
        )  # [B·T]
        weights = (targets.reshape(-1) != IGNORE_INDEX).to(per_token.dtype)
        if loss_mask is not None:
            if loss_mask.shape != targets.shape:
                raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} must equal targets shape {tuple(targets.shape)}")
            weights = weights * loss_mask.reshape(-1).to(per_token.dtype)
        # All-zero weights give 0 (not NaN); fractional weights are a proper weighted mean.
        return (per_token * weights).sum() / weights.sum().clamp_min(MIN_LOSS_WEIGHT)

    def _geo_loss(self, hidden: Tensor, block_geo: list[Tensor]) -> Tensor:
        if block_geo:
            return torch.stack(block_geo).float().mean()
        if self.config.variant in ("leech", "monster") and self.config.lambda_geo > 0:
            return leech_resonance_loss(
                hidden, radius=self.config.leech_geo_radius, stride=self.config.leech_geo_stride
            )
        return hidden.new_zeros((), dtype=torch.float32)


def compile_model(model: LilaLM, **kwargs: object) -> nn.Module:
    """``torch.compile(model, **kwargs)``: optional, for long GPU runs (first steps are slow)."""
    return torch.compile(model, **kwargs)

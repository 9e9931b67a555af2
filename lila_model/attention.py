# SPDX-License-Identifier: AGPL-3.0-or-later
"""Causal self-attention for the vanilla, e8 and leech variants, RoPE and the KV cache.

Every variant ends in ``F.scaled_dot_product_attention`` with ``is_causal=True`` (flash
kernels on GPU); the geometry acts on the queries and keys before that call:

vanilla
    q, k, v = x·W; RoPE on q, k.
e8 (geometric bias along an E8 root)
    Head h of layer l owns one fixed E8 root r (index (l·H + h)·37 mod 240, so heads spread
    over the 240 roots). For a query q_i (before RoPE) let u_i = cos(q_i, ρ) where ρ is r/‖r‖
    repeated over the head's 8-dim blocks (a unit vector after dividing by √(hd/8)); w_j
    likewise for key k_j. The score gets the bias
    ``b_ij = s_h · u_i · w_j`` with a learned per-head scale s_h that starts at 0 (so an
    untrained e8 model is exactly vanilla). The bias is added without a dense mask: q and k
    are extended by one extra dim, s_h·√d_h·u_i and w_j (zero-padded to 8 dims on CUDA), whose
    product is b_ij
    after SDPA's 1/√d_h scaling, so the causal fast path and the KV cache work unchanged.
leech (keys and queries snapped to Λ24)
    In every ``leech_every``-th layer, the first ``leech_blocks_per_head`` 24-blocks of each
    head's q and k (after RoPE; only k or only q with ``leech_targets``) are replaced by
    ``‖b‖ · N(R·b/‖b‖) / R`` where N is the exact nearest point of √8·Λ24 and R a learned
    per-head radius: the block becomes a lattice point near the shell of radius R, scaled
    back by ‖b‖/R (so its length stays ≈ ‖b‖). The rounding is straight-through for q/k and
    LSQ-style for R (d/dR = −‖b‖·(N(u) − u)/R²). This changes the scores; an orthogonal
    matrix applied to both q and k would not (qRᵀ·kRᵀ = q·k), which is why the upstream
    "Leech kernel" was a no-op (see tests/unit/model/test_attention.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lila_model.config import E8_DIM, LEECH_DIM, LilaConfig
from lila_model.lattice.e8 import e8_roots
from lila_model.resonance import leech_snap

# On CUDA the E8 bias rides on 8 extra q/k dims (1 carries it, 7 zeros keep the head size a
# multiple of 8 for the flash kernels); on CPU one extra dim is enough.
E8_BIAS_DIMS_CUDA = 8
# Stride through the 240 roots when assigning one root per (layer, head); coprime to 240.
E8_HEAD_ROOT_STRIDE = 37
NORM_EPS = 1e-6


def rope_tables(positions: Tensor, head_dim: int, base: float) -> Tensor:
    """Rotary phases e^{i·t·θ_j} for absolute ``positions`` [T]: complex64 [T, head_dim/2], θ_j = base^(−2j/D)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, head_dim/2]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate the channel pairs (x_{2j}, x_{2j+1}) of x [B, H, T, D] by the phases ``freqs`` [T, D/2].

    One complex multiply in float32 (then back to x's dtype): cheaper on CPU than the
    rotate-half form, which needs a cat, a neg and two multiplies per tensor.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, H, T, D/2] complex
    return torch.view_as_real(pairs * freqs).flatten(-2).to(x.dtype)  # [B, H, T, D]


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """Boolean [t_q, t_k] mask (True = may attend) for queries that are the last t_q of t_k positions."""
    offset = t_k - t_q
    rows = torch.arange(t_q, device=device)[:, None] + offset
    cols = torch.arange(t_k, device=device)[None, :]
    return cols <= rows


class KVCache:
    """Keys and values of every layer for incremental decoding ([B, H, T, D] each, grown by cat)."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of cached positions (0 when empty)."""
        first = self.keys[0]
        return 0 if first is None else first.size(2)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's k, v for ``layer`` and return all cached keys and values."""
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_v is not None:
            k = torch.cat([old_k, k], dim=2)  # [B, H, T_old + T, Dk]
            v = torch.cat([old_v, v], dim=2)  # [B, H, T_old + T, Dv]
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (the vanilla variant; base of the others)."""

    def __init__(self, config: LilaConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.d_model = config.d_model
        self.dropout = config.dropout
        self.use_rope = config.position == "rope"
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self._build_input_projection(config)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _build_input_projection(self, config: LilaConfig) -> None:
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v, each [B, H, T, head_dim], from x [B, T, d_model]."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.d_model, dim=2)  # 3 × [B, T, d]
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        v = v.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        return q, k, v

    def qk_transform(self, q: Tensor, k: Tensor, rope: Tensor | None) -> tuple[Tensor, Tensor]:
        """Position (and, in subclasses, geometry) applied to q and k before attention."""
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k

    def forward(
        self, x: Tensor, rope: Tensor | None, cache: KVCache | None = None
    ) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q, k = self.qk_transform(q, k, rope if self.use_rope else None)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        t_k = k.size(2)
        mask, is_causal = None, False
        if t == t_k:
            is_causal = t > 1
        elif t > 1:
            mask = causal_mask(t, t_k, x.device)
        if v.size(-1) != q.size(-1):
            # e8 widens q and k; give v the same width (zeros) so the fused causal kernels apply.
            v = F.pad(v, (0, q.size(-1) - v.size(-1)))  # [B, H, T_k, hd + extra]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
        )[..., : self.head_dim]  # [B, H, T, hd]
        y = y.transpose(1, 2).contiguous().view(b, t, self.d_model)  # [B, T, d]
        return self.resid_dropout(self.proj(y))


class E8Attention(CausalSelfAttention):
    """Attention with a per-head bias along an E8 root direction (see module docstring)."""

    def __init__(self, config: LilaConfig, layer_index: int) -> None:
        super().__init__(config, layer_index)
        self.bias_scale = nn.Parameter(torch.zeros(config.n_heads))
        self.register_buffer("head_roots", torch.empty(config.n_heads, E8_DIM), persistent=False)
        self.init_buffers()

    def head_root_indices(self) -> list[int]:
        """Index into ``e8_roots()`` of the root each head uses."""
        first = self.layer_index * self.n_heads
        return [((first + h) * E8_HEAD_ROOT_STRIDE) % 240 for h in range(self.n_heads)]

    @torch.no_grad()
    def init_buffers(self) -> None:
        """(Re)compute the unit root direction of each head (after meta-device construction too)."""
        device = self.head_roots.device
        with torch.device("cpu"):
            roots = e8_roots().to(torch.float32)[self.head_root_indices()]  # [H, 8]
            dirs = roots / roots.norm(dim=-1, keepdim=True)
        self.head_roots = dirs.to(device)

    def root_alignment(self, x: Tensor) -> Tensor:
        """cos(x, ρ_h) for x [B, H, T, hd], ρ_h = head h's unit root tiled over the hd/8 blocks: [B, H, T].

        Equals the sum over blocks of ⟨block, r̂_h⟩ divided by ‖x‖·√(hd/8): the blocks'
        projections on the root direction, pooled and normalized once per head vector.
        One batched matmul and one norm (few elementwise passes: this runs on every q and k).
        """
        tiled = self.head_roots.to(x.dtype).repeat(1, self.head_dim // E8_DIM)  # [H, hd]
        dots = torch.matmul(x, tiled.unsqueeze(-1)).squeeze(-1)  # [B, H, T]
        scale = math.sqrt(self.head_dim // E8_DIM)
        return dots / (torch.linalg.vector_norm(x, dim=-1) * scale).clamp_min(NORM_EPS)

    def qk_transform(self, q: Tensor, k: Tensor, rope: Tensor | None) -> tuple[Tensor, Tensor]:
        u = self.root_alignment(q)  # [B, H, T]
        w = self.root_alignment(k)  # [B, H, T]
        q, k = super().qk_transform(q, k, rope)
        gain = (self.bias_scale * math.sqrt(self.head_dim)).to(q.dtype)[None, :, None]  # [1, H, 1]
        extra = [(gain * u).unsqueeze(-1)], [w.unsqueeze(-1).to(k.dtype)]  # [B, H, T, 1] each
        if q.device.type == "cuda":  # pad to a multiple of 8 dims for the GPU flash kernels
            pad = q.new_zeros(*q.shape[:-1], E8_BIAS_DIMS_CUDA - 1)  # [B, H, T, 7]
            extra[0].append(pad)
            extra[1].append(pad)
        q = torch.cat([q, *extra[0]], dim=-1)  # [B, H, T, hd + 1] (CUDA: hd + 8)
        k = torch.cat([k, *extra[1]], dim=-1)  # [B, H, T, hd + 1] (CUDA: hd + 8)
        return q, k


class LeechAttention(CausalSelfAttention):
    """Attention whose q/k 24-blocks are snapped to the Leech lattice (see module docstring)."""

    def __init__(self, config: LilaConfig, layer_index: int) -> None:
        super().__init__(config, layer_index)
        self.snaps = config.leech_layer(layer_index)
        self.snap_dims = config.leech_blocks_per_head * LEECH_DIM
        self.snap_q = "q" in config.leech_targets
        self.snap_k = "k" in config.leech_targets
        if self.snaps:
            self.log_radius = nn.Parameter(torch.full((config.n_heads,), math.log(config.leech_radius_init)))

    def radius(self) -> Tensor:
        """The learned snapping radius of each head, [H]."""
        return self.log_radius.exp()

    def qk_transform(self, q: Tensor, k: Tensor, rope: Tensor | None) -> tuple[Tensor, Tensor]:
        q, k = super().qk_transform(q, k, rope)
        if not self.snaps:
            return q, k
        radius = self.radius().to(q.dtype)[:, None, None]  # [H, 1, 1] against q [B, H, T, hd]
        n = self.snap_dims
        if self.snap_q:
            q = torch.cat([leech_snap(q[..., :n], radius), q[..., n:]], dim=-1)  # [B, H, T, hd]
        if self.snap_k:
            k = torch.cat([leech_snap(k[..., :n], radius), k[..., n:]], dim=-1)  # [B, H, T, hd]
        return q, k


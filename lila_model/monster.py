# SPDX-License-Identifier: AGPL-3.0-or-later
"""The monster variant: upstream Monster-LILA, made causal and measurable.

* Frozen Leech-derived Q/K maps: every 24-block x_b of the (normalized) hidden state is
  mapped by a fixed 24×24 matrix F whose rows are 24 mutually orthogonal minimal vectors
  of √8·Λ24 divided by √32 (Hadamard patterns on a trio of octads, see
  :func:`leech_frame`): q_b = F·x_b. Keys use the same map followed by a fixed coordinate
  permutation π(i) = (5·i + 1) mod 24 inside each block: k_b = P_π·F·x_b. Unlike one
  orthogonal map applied to both q and k (which cancels in q·kᵀ), the permutation on k
  alone changes the scores: q_i·k_j = x_iᵀ Fᵀ P_π F x_j.
* Learned values and output projection (``v``, ``proj``); RoPE on q and k as in the other
  variants, causal SDPA.
* α phase modulation of the hidden state: the embedding at absolute position t is viewed as
  d/2 planes (x_{2j}, x_{2j+1}) and each plane is rotated by the angle α·t, α = 1/137 by
  default (``monster_alpha``), so the residual stream carries a slow phase clock with a
  period of 2π/α ≈ 861 tokens.

The frozen maps are persistent buffers (saved in checkpoints), so 2·d² fewer weights are
learned per layer; the default ``mlp_ratio`` of this variant (5) adds them back to the MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lila_model.attention import CausalSelfAttention
from lila_model.config import LEECH_DIM, LilaConfig
from lila_model.lattice.golay import golay_codewords
from lila_model.lattice.leech import LEECH_MIN_NORM2

OCTAD_WEIGHT = 8
HADAMARD_ORDER = 8
OCTAD_ENTRY = 2  # minimal vectors of shape (±2⁸, 0¹⁶)
PERM_MULT = 5  # coprime to 24, so i -> (5i + 1) mod 24 is a permutation
PERM_SHIFT = 1


def leech_frame() -> Tensor:
    """24 mutually orthogonal minimal vectors of √8·Λ24, as rows of an int64 [24, 24] matrix.

    Take a trio of the Golay code (three disjoint octads covering the 24 coordinates: the
    first octad in codeword order, the first octad disjoint from it, and the complement of
    both, itself an octad). On each octad put the 8 rows of the Sylvester Hadamard matrix
    H8 times 2: every row has an even number of minus signs, so each vector has shape
    (±2⁸, 0¹⁶) on an octad and is a minimal vector (norm² 32); rows on one octad are
    orthogonal because H8 is, rows on different octads have disjoint support. So the frame
    divided by √32 is an orthogonal matrix built from genuine lattice vectors (condition
    number 1, unlike a lattice basis of minimal vectors, whose condition number is ~10⁴).
    """
    words = golay_codewords().to(torch.int64)  # [4096, 24] 0/1
    octads = words[words.sum(dim=-1) == OCTAD_WEIGHT]  # [759, 24]
    first = octads[0]
    disjoint = octads[(octads * first).sum(dim=-1) == 0]
    second = disjoint[0]
    third = 1 - first - second
    idx = torch.arange(HADAMARD_ORDER)
    ones = (idx[:, None] & idx[None, :]).to(torch.int64)  # [8, 8] bitwise AND
    parity = torch.zeros_like(ones)
    for bit in range(HADAMARD_ORDER.bit_length() - 1):
        parity ^= (ones >> bit) & 1
    hadamard = 1 - 2 * parity  # [8, 8] Sylvester H8
    frame = torch.zeros(LEECH_DIM, LEECH_DIM, dtype=torch.int64)
    for k, octad in enumerate((first, second, third)):
        support = octad.nonzero().squeeze(-1)  # [8]
        frame[k * HADAMARD_ORDER : (k + 1) * HADAMARD_ORDER, support] = OCTAD_ENTRY * hadamard
    return frame


def key_permutation() -> Tensor:
    """The fixed coordinate permutation π applied to every 24-block of the keys, [24] int64."""
    return (torch.arange(LEECH_DIM) * PERM_MULT + PERM_SHIFT) % LEECH_DIM


def phase_modulate(x: Tensor, positions: Tensor, alpha: float) -> Tensor:
    """Rotate each channel plane (x_{2j}, x_{2j+1}) of x [B, T, d] by α·t for positions t [T]."""
    b, t, d = x.shape
    theta = alpha * positions.to(torch.float32)  # [T]
    cos = theta.cos().to(x.dtype)[None, :, None]  # [1, T, 1]
    sin = theta.sin().to(x.dtype)[None, :, None]  # [1, T, 1]
    planes = x.view(b, t, d // 2, 2)  # [B, T, d/2, 2]
    a, c = planes[..., 0], planes[..., 1]  # [B, T, d/2] each
    rotated = torch.stack([a * cos - c * sin, a * sin + c * cos], dim=-1)  # [B, T, d/2, 2]
    return rotated.view(b, t, d)


class MonsterAttention(CausalSelfAttention):
    """Causal attention with frozen Leech q/k maps, permuted keys and learned values."""

    def _build_input_projection(self, config: LilaConfig) -> None:
        self.v = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.register_buffer("qk_frame", torch.empty(LEECH_DIM, LEECH_DIM))
        self.register_buffer("key_perm", torch.empty(LEECH_DIM, dtype=torch.int64))
        self.init_frozen_maps()

    @torch.no_grad()
    def init_frozen_maps(self) -> None:
        """Compute the frozen frame and permutation (on CPU, then moved to the buffers' device)."""
        device = self.qk_frame.device
        with torch.device("cpu"):
            frame = leech_frame().to(torch.float32) / float(LEECH_MIN_NORM2) ** 0.5
            perm = key_permutation()
        self.qk_frame = frame.to(device)
        self.key_perm = perm.to(device)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        blocks = x.view(b, t, d // LEECH_DIM, LEECH_DIM)  # [B, T, d/24, 24]
        q = blocks @ self.qk_frame.to(x.dtype).T  # [B, T, d/24, 24]
        k = q[..., self.key_perm]  # [B, T, d/24, 24]
        q = q.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        v = self.v(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        return q, k, v

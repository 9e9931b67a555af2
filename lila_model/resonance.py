# SPDX-License-Identifier: AGPL-3.0-or-later
"""E8 and Leech "resonance": the E8 branch, the geometric losses and the resonance monitor.

E8 resonance branch (e8 variant, one per block)
    z = W_down·h ∈ ℝ⁸; soft assignment p = softmax(−‖z − r‖²/τ) over the 240 E8 roots r
    (equal to softmax(2⟨z, r⟩/τ) because every root has norm² 2); z_soft = Σ p_r·r. The
    forward pass uses the nearest root z_hard, the backward pass the soft one
    (straight-through: z_q = z_soft + sg(z_hard − z_soft)); the branch adds g·W_up·z_q to
    the residual stream with a learned gain g that starts at ``e8_strength_init``.
    Its geometric loss is 1 − max_r cos(z, r), averaged over positions.
Leech resonance loss (leech and monster variants)
    Each 24-block b of the final hidden state (every ``leech_geo_stride``-th position) is
    scaled to the shell of radius R (default √32, the minimal-vector shell of √8·Λ24):
    u = R·b/‖b‖. The loss is ‖u − N(u)‖²/R², N the exact nearest point of √8·Λ24
    (``nearest_leech``), so 0 means the block points exactly at a lattice point of that
    shell and the worst case is (covering radius 4)²/R² = 0.5 at R = √32.
Resonance monitor
    The max cosine of each block of a hidden state to the lattice directions (the 240 E8
    roots, or the 196,560 minimal vectors of Λ24), averaged over the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lila_model.config import E8_DIM, LEECH_DIM, LilaConfig
from lila_model.lattice.e8 import e8_roots
from lila_model.lattice.leech import leech_min_vectors, nearest_leech

NORM_EPS = 1e-6
# The Leech decoder runs many small ops per chunk; on CPU, intra-op threads mostly add
# synchronisation there, so the decoder calls below run single-threaded. Raise this only if
# `python -m bench.leech` (which times 1 and 2 threads) shows more threads decoding faster.
DECODER_THREADS = 1


@contextmanager
def _decoder_threads(x: Tensor) -> Iterator[None]:
    """Run the enclosed CPU decoder call with ``DECODER_THREADS`` torch threads, then restore."""
    previous = torch.get_num_threads()
    if x.device.type != "cpu" or previous <= DECODER_THREADS:
        yield
        return
    torch.set_num_threads(DECODER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _nearest(u: Tensor) -> Tensor:
    """Exact nearest point of √8·Λ24 for u [..., 24] (float32 work, u's dtype out, no gradient)."""
    with torch.no_grad(), _decoder_threads(u):
        return nearest_leech(u.detach().float()).to(u.dtype)
E8_ROOT_NORM2 = 2.0
# Rows of lattice directions scored per matmul in the resonance monitor (bounds memory).
MONITOR_CHUNK = 65536


def leech_snap(x: Tensor, radius: Tensor | float) -> Tensor:
    """Round the direction of every 24-block of x [..., n·24] to √8·Λ24 on a shell of ``radius``.

    Returns ``b + ‖b‖·sg(N(R·b̂) − R·b̂)/R`` per block b: the forward value is ‖b‖·N(R·b̂)/R
    (a lattice point, rescaled so its length stays close to ‖b‖), the gradient w.r.t. b is the identity plus the norm term and w.r.t. R is
    LSQ-style. ``radius`` is a float or a tensor that broadcasts against x (e.g. [H, 1, 1] for
    q of shape [B, H, T, n·24]).
    """
    *lead, width = x.shape
    if width % LEECH_DIM:
        raise ValueError(f"leech_snap needs a last dim that is a multiple of {LEECH_DIM}; got {width}")
    blocks = x.reshape(*lead, width // LEECH_DIM, LEECH_DIM)  # [..., n, 24]
    norm = blocks.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)  # [..., n, 1]
    if isinstance(radius, Tensor):
        radius = radius[..., None]  # [..., 1, 1] against [..., n, 1]
    u = blocks * (radius / norm)
    error = _nearest(u) - u.detach()
    return (blocks + norm * error / radius).reshape(x.shape)


def leech_resonance_loss(hidden: Tensor, *, radius: float, stride: int = 1) -> Tensor:
    """Mean ‖u − N(u)‖²/R² over the 24-blocks of ``hidden`` [B, T, d] (positions 0, stride, 2·stride, …)."""
    sample = hidden[:, ::stride]  # [B, T', d]
    b, t, d = sample.shape
    blocks = sample.reshape(b, t, d // LEECH_DIM, LEECH_DIM).float()  # [B, T', d/24, 24]
    u = F.normalize(blocks, dim=-1, eps=NORM_EPS) * radius
    target = _nearest(u)
    return ((u - target) ** 2).sum(-1).mean() / (radius * radius)


class E8Resonance(nn.Module):
    """The E8 resonance branch of one block; returns (branch output, geo loss)."""

    def __init__(self, config: LilaConfig) -> None:
        super().__init__()
        self.temperature = config.e8_temperature
        self.down = nn.Linear(config.d_model, E8_DIM, bias=False)
        self.up = nn.Linear(E8_DIM, config.d_model, bias=False)
        self.strength = nn.Parameter(torch.tensor(float(config.e8_strength_init)))
        self.register_buffer("roots", torch.empty(240, E8_DIM), persistent=False)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """(Re)compute the 240 roots (after meta-device construction too)."""
        device = self.roots.device
        with torch.device("cpu"):
            roots = e8_roots().to(torch.float32)
        self.roots = roots.to(device)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        z = self.down(h)  # [B, T, 8]
        roots = self.roots.to(z.dtype)  # [240, 8]
        dots = z @ roots.T  # [B, T, 240]
        p = torch.softmax(2.0 * dots / self.temperature, dim=-1)  # [B, T, 240]
        z_soft = p @ roots  # [B, T, 8]
        best = dots.argmax(dim=-1)  # [B, T]
        z_hard = roots[best]  # [B, T, 8]
        z_q = z_soft + (z_hard - z_soft).detach()
        out = self.strength * self.up(z_q)  # [B, T, d]
        best_dot = dots.gather(-1, best.unsqueeze(-1)).squeeze(-1)  # [B, T]
        cos = best_dot / (z.norm(dim=-1) * math.sqrt(E8_ROOT_NORM2)).clamp_min(NORM_EPS)
        geo = (1.0 - cos.float()).mean()
        return out, geo


def lattice_directions(kind: str, *, device: torch.device | str = "cpu") -> Tensor:
    """Unit lattice directions for the resonance monitor: ``e8`` [240, 8] or ``leech`` [196560, 24]."""
    if kind == "e8":
        dirs = e8_roots().to(torch.float32)
    elif kind == "leech":
        dirs = leech_min_vectors().to(torch.float32)
    else:
        raise ValueError(f"unknown lattice {kind!r}; use 'e8' or 'leech'")
    return (dirs / dirs.norm(dim=-1, keepdim=True)).to(device)


def max_cosine(hidden: Tensor, directions: Tensor) -> Tensor:
    """Mean over blocks of the max cosine of each block of hidden [N, d] to ``directions`` [M, k]: [N]."""
    n, d = hidden.shape
    k = directions.size(1)
    if d % k:
        raise ValueError(f"hidden size {d} is not a multiple of the lattice dimension {k}")
    blocks = F.normalize(hidden.float().reshape(n * (d // k), k), dim=-1, eps=NORM_EPS)  # [N·d/k, k]
    best = torch.full((blocks.size(0),), -1.0, device=hidden.device)
    for start in range(0, directions.size(0), MONITOR_CHUNK):
        chunk = directions[start : start + MONITOR_CHUNK].to(blocks.device)  # [m, k]
        best = torch.maximum(best, (blocks @ chunk.T).amax(dim=-1))
    return best.view(n, d // k).mean(dim=-1)

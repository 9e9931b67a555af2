# SPDX-License-Identifier: AGPL-3.0-or-later
"""Fixed-rate E8 nested-lattice (Voronoi) code E8 / 2^R·E8.

Each block of ``block`` coordinates (after the optional rotation) gets one fp16 scale
s; the block is cut into 8-vectors, each vector y/s is rounded to its nearest E8
point v, and v is sent as its coset modulo q·E8 (q = 2^R): exactly R bits per
coordinate, so R + 16/block bits per coordinate in all. The decoder maps the coset
back to its representative in the Voronoi cell of q·E8 (v' − q·nearest(v'/q)). The
padding, rotation, dither, scales and header are :class:`lila_codec.block.BlockCodec`'s;
this module is the E8 kernel.

Overload: the decoder's representative of a coset is its point in the Voronoi cell of
q·E8 shifted by a tiny generic offset a (so no lattice point is on the boundary and the
representative is unique); v decodes to itself iff max_r <v − a, r> < q over the 240
roots, a cheap exact test. For each block the encoder tries ``scale_candidates`` scales
s_k = h_max / (q − δ_k), δ_k rising from DELTA_LOW to the safe value, where h_max is the
block's largest max_r <y, r>; a scale that overloads any vector of the block is
discarded. By default a block keeps its first in-range scale (granular error grows with
the scale); ``exhaustive=True`` measures every candidate's exact error and keeps the
best. The last candidate is always the *safe* one, δ = 2 (3 with dither): rounding moves
a point by at most one cell, so it never overloads and no payload is ever silently wrong.

Vector layout: inside a block of B = 8·m coordinates, vector j is coordinates
{j, j + m, …, j + 7m} (the block viewed as [8, m], one vector per column). After the
rotation the grouping is arbitrary, and this one makes the coordinate-major kernel of
:func:`lila_model.lattice.e8.nearest_e8_cols` need no transposition of the codes.

Lattice coordinates: with the generator rows g0 = 2e0, g_i = e_i − e_{i−1} (i = 1..6),
g7 = (½)⁸ (determinant 1), a point v = Σ k_i g_i has k7 = 2v7, k6 = v6 − v7,
k_j = v_j − v7 + k_{j+1} (j = 5..1), k0 = (v0 + k1 − v7)/2; the code is k mod q.

Tuning: see :class:`E8Codec` for what each option does and which way to move it;
``python -m bench.codec`` measures the error and speed of each rate.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import torch

from lila_codec import blockscale
from lila_codec.block import BlockCodec, Blocks
from lila_codec.dither import lattice_dither, uniform01
from lila_codec.errors import CodecError
from lila_model.lattice.e8 import E8_DIM, max_root_inner_cols, nearest_e8_cols

logger = logging.getLogger(__name__)

ALLOWED_BITS = BlockCodec.allowed_bits
DEFAULT_BITS = 4
DEFAULT_BLOCK = 64
DEFAULT_SCALE_CANDIDATES = 4
MAX_SCALE_CANDIDATES = 32
# Candidate scales are h_max / (q − δ) for δ evenly spaced in [DELTA_LOW, safe δ].
# δ < 2 lets the block's largest vector use more of the cell at the risk of overload.
DELTA_LOW = 0.0
SAFE_DELTA = 2.0  # rounding adds at most 1 to max_r <·, r>, and the cell interior is ≤ q − 1
SAFE_DELTA_DITHER = 3.0  # the dither adds at most 1 more
E8_DITHER_PERIOD = 2.0  # [0, 2)^8 is a union of fundamental regions of E8 (2ℤ⁸ ⊂ E8)
# h(y) = max_r <y, r> is at most 4·max|y_i| (½·Σ|y_i| with all eight at the maximum).
H_OVER_MAX_ABS = 4.0
# The decoder's representative of a coset is its point in the Voronoi cell of q·E8 shifted by
# a = (2⁻³, …, 2⁻¹⁰): <a, r> ≠ 0 for every root r (distinct powers of two), so no lattice point
# lies on the shifted cell's boundary and the representative is unique; |<a, r>| < 0.19 keeps
# every interior point of the unshifted cell inside. All values stay exact in float32.
OFFSET_EXPONENTS = (3, 4, 5, 6, 7, 8, 9, 10)
# Blocks per chunk (speed only, never the payload). The eager encoder makes about a dozen
# intermediates of a chunk's size: its chunk is small enough for them to stay in the CPU
# cache. The compiled encoder fuses them into a few loops and prefers large chunks.
EAGER_CHUNK_BLOCKS = 2048
COMPILED_CHUNK_BLOCKS = 1 << 14
DECODE_CHUNK_BLOCKS = 1 << 14


def candidate_deltas(count: int, *, dither: bool) -> tuple[float, ...]:
    """The δ values of the candidate scales, evenly spaced from DELTA_LOW and ending exactly with the safe one."""
    safe = SAFE_DELTA_DITHER if dither else SAFE_DELTA
    grid = blockscale.candidate_grid(DELTA_LOW, safe, count, maximum=MAX_SCALE_CANDIDATES)
    return (*grid[:-1], safe)


def voronoi_offset(device: torch.device | str = "cpu") -> torch.Tensor:
    """The offset a = (2⁻³, 2⁻⁴, …, 2⁻¹⁰) as a coordinate-major column ``[8, 1, 1]``."""
    return torch.tensor([2.0**-e for e in OFFSET_EXPONENTS], dtype=torch.float32, device=device).view(
        E8_DIM, 1, 1
    )


def lattice_coords_mod(v: torch.Tensor, q: int) -> torch.Tensor:
    """E8 coordinates k of coordinate-major points ``v[8, ...]``, reduced into [0, q) (float)."""
    v7 = v[7]
    k = [v7] * E8_DIM
    k[7] = 2.0 * v7
    k[6] = v[6] - v7
    for j in range(5, 0, -1):
        k[j] = v[j] - v7 + k[j + 1]
    k[0] = (v[0] + k[1] - v7) * 0.5
    stacked = torch.stack(k)  # [8, ...] integers
    return stacked - q * torch.floor(stacked * (1.0 / q))


def points_from_coords(k: torch.Tensor) -> torch.Tensor:
    """Points Σ k_i g_i for coordinate-major lattice coordinates ``k[8, ...]`` (float)."""
    half7 = 0.5 * k[7]
    rows = [2.0 * k[0] - k[1] + half7]
    rows += [k[j] - k[j + 1] + half7 for j in range(1, 6)]
    rows += [k[6] + half7, half7]
    return torch.stack(rows)  # [8, ...]


def candidate(
    yc: torch.Tensor,
    uc: torch.Tensor | None,
    s: torch.Tensor,
    a: torch.Tensor,
    q: int,
    best_v: torch.Tensor,
    best_err: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Try block scales ``s[nb]`` on coordinate-major blocks ``yc[8, nb, m]``; keep the better result.

    Rounds y/s (+ dither) to the nearest E8 points v and measures each block's squared
    reconstruction error, +inf where any vector falls outside the decoder's
    representative region (strict interior test h(v − a) < q). Returns the updated
    (best_v [8, nb, m], best_err [nb]) and the mask of blocks where this scale won.
    Pure tensor code: ``torch.compile`` fuses it into a couple of loops.
    """
    sb = s.view(1, -1, 1)  # [1, nb, 1]
    z = yc * (1.0 / torch.where(sb > 0, sb, torch.ones_like(sb)))
    if uc is not None:
        z = z + uc
    v = nearest_e8_cols(z)
    inside = (max_root_inner_cols(v - a) < q).all(-1)  # [nb]
    rec = v if uc is None else v - uc
    err = (yc - sb * rec).square().sum(-1).sum(0)  # [nb]
    better = inside & (err < best_err)
    return torch.where(better.view(1, -1, 1), v, best_v), torch.where(better, err, best_err), better


def block_peaks(yc: torch.Tensor) -> torch.Tensor:
    """Per block, the largest max_r <y, r> over its vectors: ``[nb]`` from ``yc[8, nb, m]``."""
    return max_root_inner_cols(yc).amax(-1)


def decode_points(codes: torch.Tensor, q: int) -> torch.Tensor:
    """Voronoi representatives ``[nb, 8, m]`` (float32, exact) of codes ``[nb, 8, m]`` uint8."""
    k = codes.transpose(0, 1).to(torch.float32)  # [8, nb, m]
    v = points_from_coords(k)
    a = voronoi_offset(codes.device)
    return (v - q * nearest_e8_cols((v - a) * (1.0 / q))).transpose(0, 1)  # [nb, 8, m]


class _Kernels:
    """The encoder's tensor functions, eager or compiled."""

    def __init__(self, *, compiled: bool) -> None:
        wrap = (lambda f: torch.compile(f, dynamic=True)) if compiled else (lambda f: f)
        self.candidate = wrap(candidate)
        self.peaks = wrap(block_peaks)
        self.coords = wrap(lattice_coords_mod)
        self.compiled = compiled


def encode_blocks(
    kernels: _Kernels,
    yb: torch.Tensor,
    u: torch.Tensor | None,
    unit: float,
    q: int,
    deltas: tuple[float, ...],
    *,
    exhaustive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode blocks ``yb[nb, 8, m]``: (codes [nb, 8, m] uint8, fp16 scales [nb], squared error [nb]).

    The candidates go from the smallest scale to the safe one. First-fit (default): a block
    keeps the first scale that does not overload it, so later candidates only run on the
    blocks still overloaded (most blocks fit one of the first candidates, so the search costs
    little more than one nearest-point pass). Granular error grows with the scale, so the
    first in-range scale is nearly always the best one and first-fit stays close to the
    exhaustive search (``test_scale_search`` in ``tests/unit/codec/test_voronoi.py`` measures
    and bounds the gap). ``exhaustive``: every block tries every candidate and keeps the
    smallest error, one full nearest-point pass per candidate.
    """
    yc = yb.transpose(0, 1).contiguous()  # [8, nb, m]: one row per coordinate
    uc = None if u is None else u.transpose(0, 1).contiguous()
    a = voronoi_offset(yb.device)
    h_max = kernels.peaks(yc)  # [nb]
    best_err = torch.full_like(h_max, math.inf)
    best_s16 = torch.zeros(h_max.shape, dtype=torch.float16, device=yb.device)
    best_v = torch.zeros_like(yc)
    if exhaustive:
        for delta in deltas:
            s16 = blockscale.fp16_round_up(h_max * (1.0 / ((q - delta) * unit)))
            best_v, best_err, better = kernels.candidate(
                yc, uc, s16.to(torch.float32) * unit, a, q, best_v, best_err
            )
            best_s16 = torch.where(better, s16, best_s16)
    else:
        active = torch.arange(h_max.numel(), device=yb.device)  # blocks without an in-range scale yet
        for delta in deltas:
            if active.numel() == 0:
                break
            sub_y = yc.index_select(1, active)  # [8, n_active, m]
            sub_u = None if uc is None else uc.index_select(1, active)
            s16 = blockscale.fp16_round_up(h_max[active] * (1.0 / ((q - delta) * unit)))
            v, err, fits = kernels.candidate(
                sub_y,
                sub_u,
                s16.to(torch.float32) * unit,
                a,
                q,
                torch.zeros_like(sub_y),
                torch.full_like(s16, math.inf, dtype=torch.float32),
            )
            done = active[fits]
            best_v.index_copy_(1, done, v[:, fits])
            best_err[done] = err[fits]
            best_s16[done] = s16[fits]
            active = active[~fits]
    codes = kernels.coords(best_v, q).to(torch.uint8).transpose(0, 1)  # [nb, 8, m]
    return codes, best_s16, best_err


class E8Codec(BlockCodec, name="e8", block_multiple=E8_DIM, chunk_blocks=DECODE_CHUNK_BLOCKS):
    """E8 Voronoi code at ``bits`` bits per coordinate plus one fp16 scale per block.

    Options (keyword-only; :class:`lila_codec.block.BlockCodec` says how ``bits``,
    ``block``, ``rotation`` and ``dither`` trade error against traffic):

    * ``bits``: 2–8 code bits per coordinate (default 4).
    * ``block``: coordinates per scale, a multiple of 8 (default 64).
    * ``rotation``: Hadamard size; ``None`` (default) picks the largest power of two
      dividing the block, ``0`` turns rotation off.
    * ``dither``: subtractive dither over E8's Voronoi cell (default off).
    * ``scale_candidates``: 1–32 scales tried per block (default 4), from the most
      aggressive to the safe one. A few candidates get most of the gain of the search;
      1 uses only the safe scale, which leaves most blocks' largest vector well inside
      the cell (clearly more error); beyond about 8 the gain is negligible while the
      blocks that overload try more candidates.
    * ``exhaustive``: every block tries every candidate and keeps the smallest error,
      instead of its first in-range scale. Costs one nearest-point pass per candidate for
      a small gain that grows with ``bits``: worth it offline (weight export), not on the
      training path. ``tests/unit/codec/test_voronoi.py`` (``test_scale_search``) measures
      both searches for 1 to 9 candidates.
    * ``compile``: run the encoder's kernels through ``torch.compile``. The first encode
      in a process pays a one-off compilation, later ones run faster on CPU: worth it for
      a long-running peer, not for a single encode. Falls back to eager mode with a warning
      when no compiler toolchain works. Rare near-ties may round differently from the
      eager encoder; every payload decodes the same everywhere.

    ``python -m bench.codec`` measures the error and speed at 2, 3, 4 and 8 bits, and with
    ``--compile`` the compiled encoder's.
    """

    def __init__(
        self,
        *,
        bits: int = DEFAULT_BITS,
        block: int = DEFAULT_BLOCK,
        rotation: int | None = None,
        dither: bool = False,
        scale_candidates: int = DEFAULT_SCALE_CANDIDATES,
        exhaustive: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            bits=bits, block=block, rotation=rotation, dither=dither, scale_candidates=scale_candidates
        )
        self.deltas = candidate_deltas(scale_candidates, dither=self.dither)
        self.exhaustive = bool(exhaustive)
        self.compile = compile

    # ---- encoding --------------------------------------------------------------------------
    def _kernels(self) -> _Kernels:
        return _compiled_kernels() if self.compile else _eager_kernels()

    def _encode_chunk_blocks(self) -> int:
        return COMPILED_CHUNK_BLOCKS if self.compile else EAGER_CHUNK_BLOCKS

    def _blocks(self, y: torch.Tensor) -> Blocks:
        nb, m = y.numel() // self.block, self.block // E8_DIM
        peak = float(y.abs().max()) if y.numel() else 0.0
        # encode_blocks finds each block's h_max itself; every one is at most H_OVER_MAX_ABS · peak.
        return Blocks(y.view(nb, E8_DIM, m), None, H_OVER_MAX_ABS * peak)  # [nb, 8, m]

    def _encode_chunk(
        self, blocks: torch.Tensor, peaks: torch.Tensor | None, u: torch.Tensor | None, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kernels = self._kernels()
        try:
            codes, s16, err = encode_blocks(
                kernels, blocks, u, unit, self.q, self.deltas, exhaustive=self.exhaustive
            )
        except Exception as exc:
            if not kernels.compiled:
                raise
            # No working compiler toolchain: say so once and continue eagerly.
            logger.warning(
                "torch.compile failed (%s: %s); the E8 encoder falls back to eager mode",
                type(exc).__name__,
                exc,
            )
            self.compile = False
            codes, s16, err = encode_blocks(
                self._kernels(), blocks, u, unit, self.q, self.deltas, exhaustive=self.exhaustive
            )
        if not bool(torch.isfinite(err).all()):
            raise CodecError("internal: no in-range scale candidate for a block (please report this)")
        return codes, s16

    @classmethod
    def _dither(cls, seed: int, block: int, start: int, stop: int) -> torch.Tensor:
        """Dither uniform over E8's Voronoi cell for blocks start..stop, float64 ``[n, 8, m]``."""
        n = stop - start
        u01 = uniform01(seed, n * block, start=start * block)
        u01 = u01.view(n, E8_DIM, block // E8_DIM).transpose(0, 1)  # [8, n, m]
        return lattice_dither(u01, period=E8_DITHER_PERIOD, nearest=nearest_e8_cols).transpose(0, 1)

    # ---- decoding --------------------------------------------------------------------------
    @classmethod
    def _decode_points(cls, codes: torch.Tensor, bits: int) -> torch.Tensor:
        k = codes.view(codes.shape[0], E8_DIM, codes.shape[1] // E8_DIM)  # [n, 8, m]
        return decode_points(k, 1 << bits).to(torch.float64)  # [n, 8, m]


@lru_cache(maxsize=1)
def _eager_kernels() -> _Kernels:
    return _Kernels(compiled=False)


@lru_cache(maxsize=1)
def _compiled_kernels() -> _Kernels:
    return _Kernels(compiled=True)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Fixed-rate E8 nested-lattice (Voronoi) code E8 / 2^R·E8.

Each block of ``block`` coordinates (after the optional rotation) gets one fp16 scale
s; the block is cut into 8-vectors, each vector y/s is rounded to its nearest E8
point v, and v is sent as its coset modulo q·E8 (q = 2^R): exactly R bits per
coordinate, so R + 16/block bits per coordinate in all. The decoder maps the coset
back to its representative in the Voronoi cell of q·E8 (v' − q·nearest(v'/q)).

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

Tuning: ``bits`` 2, 3, 4 or 8 (quality ≈ +6 dB per bit); ``block`` 64–128 (smaller
blocks adapt to local scale better but pay 16/block bits of scale; block 8 wastes two
bits per coordinate); ``scale_candidates`` 1–32: 4 gets most of the gain (see
bench/codec.py), 1 uses only the safe scale (about 0.9 dB worse at 4 bits), more than 8
buys < 0.1 dB; ``exhaustive`` costs one nearest-point pass per candidate instead of
about 1.7 in all, for +0.03 dB at 4 bits and +0.25 dB at 8 bits; ``compile=True`` runs
the encoder through ``torch.compile`` (10–40 s once per process, then about 3× faster
on CPU; falls back to eager with a warning when no compiler toolchain works).
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import torch

from lila_codec import blockscale, wire
from lila_codec.base import Codec, check_section, padded_length
from lila_codec.bitpack import pack_codes, packed_nbytes, unpack_codes
from lila_codec.dither import lattice_dither, uniform01
from lila_codec.errors import CodecError
from lila_codec.hadamard import check_rotation_size, rotate
from lila_model.lattice.e8 import E8_DIM, max_root_inner_cols, nearest_e8_cols

logger = logging.getLogger(__name__)

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8)
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
# Blocks per encoder chunk: ~128 K coordinates keeps the eager intermediates in L2.
EAGER_CHUNK_BLOCKS = 2048
COMPILED_CHUNK_BLOCKS = 1 << 14
DECODE_CHUNK_BLOCKS = 1 << 14


def candidate_deltas(count: int, *, dither: bool) -> tuple[float, ...]:
    """The δ values of the candidate scales, ending with the safe one."""
    if not 1 <= count <= MAX_SCALE_CANDIDATES:
        raise ValueError(f"scale_candidates must be in 1..{MAX_SCALE_CANDIDATES}, got {count}")
    safe = SAFE_DELTA_DITHER if dither else SAFE_DELTA
    if count == 1:
        return (safe,)
    step = (safe - DELTA_LOW) / (count - 1)
    return (*(DELTA_LOW + step * i for i in range(count - 1)), safe)


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
    blocks still overloaded (about 1.7 passes instead of 4 at 4 bits); granular error grows
    with the scale, so this is within 0.1 dB of the exhaustive search below 8 bits.
    ``exhaustive``: every block tries every candidate and keeps the smallest error.
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


class E8Codec(Codec):
    """E8 Voronoi code at ``bits`` bits per coordinate plus one fp16 scale per block."""

    name = "e8"

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
        if bits not in ALLOWED_BITS:
            raise ValueError(f"e8 bits must be one of {ALLOWED_BITS}, got {bits}")
        _check_block(block)
        if rotation is None:
            rotation = block & -block  # largest power of two dividing the block
        if rotation:
            check_rotation_size(rotation, block)
        self.bits = bits
        self.q = 1 << bits
        self.block = block
        self.rotation = rotation
        self.dither = bool(dither)
        self.deltas = candidate_deltas(scale_candidates, dither=self.dither)
        self.exhaustive = bool(exhaustive)
        self.compile = compile

    def __repr__(self) -> str:
        return (
            f"E8Codec(bits={self.bits}, block={self.block}, rotation={self.rotation}, dither={self.dither}, "
            f"scale_candidates={len(self.deltas)}, exhaustive={self.exhaustive}, compile={self.compile})"
        )

    # ---- encoding --------------------------------------------------------------------------
    def _kernels(self) -> tuple[_Kernels, int]:
        if self.compile:
            return _compiled_kernels(), COMPILED_CHUNK_BLOCKS
        return _eager_kernels(), EAGER_CHUNK_BLOCKS

    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        numel = flat.numel()
        length = padded_length(numel, self.block)
        y = flat if length == numel else torch.nn.functional.pad(flat, (0, length - numel))
        if self.rotation and length:
            y = rotate(y, seed=seed, size=self.rotation)
        peak = float(y.abs().max()) if length else 0.0
        exponent = blockscale.choose_scale_exponent(H_OVER_MAX_ABS * peak)
        unit = 2.0**exponent
        nb, m = length // self.block, self.block // E8_DIM
        blocks = y.view(nb, E8_DIM, m)  # [nb, 8, m]
        codes = torch.empty((nb, E8_DIM, m), dtype=torch.uint8)
        scales = torch.empty(nb, dtype=torch.float16)
        kernels, chunk = self._kernels()
        for start in range(0, nb, chunk):
            stop = min(nb, start + chunk)
            u = None
            if self.dither:
                u = _e8_dither(seed, self.block, start, stop).to(device=flat.device, dtype=torch.float32)
            try:
                c, s16, err = encode_blocks(
                    kernels, blocks[start:stop], u, unit, self.q, self.deltas, exhaustive=self.exhaustive
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
                kernels, chunk = self._kernels()
                c, s16, err = encode_blocks(
                    kernels, blocks[start:stop], u, unit, self.q, self.deltas, exhaustive=self.exhaustive
                )
            if not bool(torch.isfinite(err).all()):
                raise CodecError("internal: no in-range scale candidate for a block (please report this)")
            codes[start:stop] = c.cpu()
            scales[start:stop] = s16.cpu()
        fields = dict(
            bits=self.bits,
            flags=(wire.FLAG_ROTATE if self.rotation else 0) | (wire.FLAG_DITHER if self.dither else 0),
            rotation=self.rotation,
            block=self.block,
            scale_exponent=exponent,
        )
        return fields, blockscale.scales_to_bytes(scales), pack_codes(codes.reshape(-1), self.bits)

    # ---- sizes -----------------------------------------------------------------------------
    def section_nbytes(self, numel: int) -> tuple[int, int]:
        length = padded_length(numel, self.block)
        return blockscale.SCALE_BYTES * (length // self.block), packed_nbytes(length, self.bits)

    # ---- decoding --------------------------------------------------------------------------
    @classmethod
    def _validate_header(cls, header: wire.Header) -> None:
        if header.bits not in ALLOWED_BITS:
            raise CodecError(
                f"e8 payload declares {header.bits} bits per coordinate; allowed: {ALLOWED_BITS}"
            )
        try:
            _check_block(header.block)
            if header.rotation:
                check_rotation_size(header.rotation, header.block)
        except ValueError as exc:
            raise CodecError(f"e8 payload header: {exc}") from None
        if header.rotate != bool(header.rotation):
            raise CodecError(
                f"e8 payload: rotation flag {header.rotate} disagrees with rotation {header.rotation}"
            )
        length = padded_length(header.numel, header.block)
        expected = (blockscale.SCALE_BYTES * (length // header.block), packed_nbytes(length, header.bits))
        check_section(header, expected)

    @classmethod
    def _decode_flat(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        length = padded_length(header.numel, header.block)
        nb, m = length // header.block, header.block // E8_DIM
        s = blockscale.scales_from_bytes(scales, nb, header.scale_exponent)
        k = unpack_codes(codes, length, header.bits).view(nb, E8_DIM, m)  # [nb, 8, m]
        q = 1 << header.bits
        out = torch.empty(length, dtype=torch.float32)
        for start in range(0, nb, DECODE_CHUNK_BLOCKS):
            stop = min(nb, start + DECODE_CHUNK_BLOCKS)
            c = decode_points(k[start:stop], q).to(torch.float64)  # [n, 8, m]
            if header.dither:
                c = c - _e8_dither(header.seed, header.block, start, stop)
            out[start * header.block : stop * header.block] = blockscale.exact_reconstruct(
                c.reshape(-1), s[start:stop], block=header.block, rotation=header.rotation, seed=header.seed
            )
        return out[: header.numel]


@lru_cache(maxsize=1)
def _eager_kernels() -> _Kernels:
    return _Kernels(compiled=False)


@lru_cache(maxsize=1)
def _compiled_kernels() -> _Kernels:
    return _Kernels(compiled=True)


def _e8_dither(seed: int, block: int, start_block: int, stop_block: int) -> torch.Tensor:
    """Dither uniform over E8's Voronoi cell for blocks start..stop, float64 ``[n, 8, m]``."""
    u01 = uniform01(seed, (stop_block - start_block) * block, start=start_block * block)
    u01 = u01.view(stop_block - start_block, E8_DIM, block // E8_DIM).transpose(0, 1)  # [8, n, m]
    return lattice_dither(u01, period=E8_DITHER_PERIOD, nearest=nearest_e8_cols).transpose(0, 1)


def _check_block(block: int) -> None:
    if not isinstance(block, int) or block < E8_DIM or block % E8_DIM or block > wire.MAX_BLOCK:
        raise ValueError(f"e8 block size must be a multiple of 8 in 8..{wire.MAX_BLOCK}, got {block}")

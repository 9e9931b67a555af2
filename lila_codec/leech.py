# SPDX-License-Identifier: AGPL-3.0-or-later
"""Fixed-rate Leech-lattice Voronoi code Λ24 / 2^R·Λ24 (optional, higher gain than E8).

Same design as :mod:`lila_codec.e8`, with the 24-dimensional Leech lattice (scaled by
√8, integer coordinates, from :mod:`lila_model.lattice.leech`): per block one fp16 scale,
each 24-vector rounded to its nearest lattice point v and sent as its coset modulo
q·Λ24 (q = 2^R): exactly R bits per coordinate. Vectors are consecutive 24-coordinate
runs of the (rotated) block. The padding, rotation, dither, scales and header are
:class:`lila_codec.block.BlockCodec`'s; this module is the Leech kernel.

Coset index: with the upper-triangular basis B of √8·Λ24, k = v·B⁻¹ (exact: B⁻¹ has
entries in ⅛ℤ) and the code is k mod q. The decoder forms v' = k·B and returns its
representative v' − q·nearest(v'/q). On the cell boundary that representative depends
on the nearest-point decoder's tie-breaking at v', so the encoder emulates the decoder
for every vector that is not strictly inside the inscribed ball (|v| < q·√8), and
rejects a scale for a block if any of its vectors would decode to another point. The
decoder's arithmetic on v'/q is exact (dyadic values; float32 up to 4 bits, float64
above), so every peer breaks ties identically.

Scale candidates: s = n_max / (q·ρ) with n_max the block's largest vector norm and ρ
from RHO_HIGH down to the safe ρ = √8 − 4/q (8/q with dither): |v| ≤ |y/s| + 4 (the
covering radius) stays inside the inscribed ball, so the safe candidate never overloads.

Tuning: see :class:`LeechCodec`; ``python -m bench.codec`` measures the codec's error and
speed next to E8's, ``python -m bench.leech`` the nearest-point decoder it spends its time in.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from lila_codec import blockscale
from lila_codec.block import BlockCodec, Blocks
from lila_codec.dither import lattice_dither, uniform01
from lila_codec.errors import CodecError
from lila_model.lattice.leech import LEECH_DIM, leech_generator_matrix, nearest_leech

ALLOWED_BITS = BlockCodec.allowed_bits
DEFAULT_BITS = 4
DEFAULT_BLOCK = 96
DEFAULT_SCALE_CANDIDATES = 3
MAX_SCALE_CANDIDATES = 16
PACKING_RADIUS = 8**0.5  # of √8·Λ24 (minimum norm² 32)
COVERING_RADIUS = 4.0  # of √8·Λ24 (√2 in unit scale)
SAFE_MARGIN = 1.0 / 64  # keeps the safe candidate strictly inside the inscribed ball despite rounding
# The most aggressive candidate: n_max/s = 3.4·q, between the packing (2.83·q) and covering
# (4·q) radii of q·Λ24.
RHO_HIGH = 3.4
LEECH_DITHER_PERIOD = 8.0  # 8ℤ²⁴ ⊂ √8·Λ24
FLOAT32_EXACT_MAX_BITS = 4  # decoder arithmetic on v'/q is exact in float32 up to this rate
CHUNK_BLOCKS = 1024  # blocks per encoder/decoder chunk (speed and memory only, never the payload)


def candidate_rhos(count: int, *, bits: int, dither: bool) -> tuple[float, ...]:
    """ρ values of the candidate scales s = n_max/(q·ρ), evenly spaced from RHO_HIGH down to the safe one."""
    q = 1 << bits
    safe = PACKING_RADIUS - (2 if dither else 1) * COVERING_RADIUS / q - SAFE_MARGIN
    return blockscale.candidate_grid(RHO_HIGH, safe, count, maximum=MAX_SCALE_CANDIDATES)


@lru_cache(maxsize=4)
def _bases(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    basis = leech_generator_matrix().to(torch.float64)
    inverse = torch.linalg.inv(basis)
    inverse = torch.round(inverse * 8.0) / 8.0  # exact: B⁻¹ ∈ ⅛ℤ
    return basis.to(dtype), inverse.to(dtype)


def coords_mod(v: torch.Tensor, q: int) -> torch.Tensor:
    """Lattice coordinates of integer points ``v[..., 24]`` reduced into [0, q) (float64)."""
    _, inverse = _bases(torch.float64)
    k = torch.round(v.to(torch.float64) @ inverse)
    return k - q * torch.floor(k / q)


def _work_dtype(bits: int) -> torch.dtype:
    return torch.float32 if bits <= FLOAT32_EXACT_MAX_BITS else torch.float64


def representatives(k: torch.Tensor, q: int, bits: int) -> torch.Tensor:
    """The decoder's points for lattice coordinates ``k[..., 24]``: v' − q·nearest(v'/q), float64."""
    basis, _ = _bases(torch.float64)
    v = k.to(torch.float64) @ basis
    work = _work_dtype(bits)
    return v - q * nearest_leech((v / q).to(work)).to(torch.float64)


class LeechCodec(BlockCodec, name="leech", block_multiple=LEECH_DIM, chunk_blocks=CHUNK_BLOCKS):
    """Leech Voronoi code at ``bits`` bits per coordinate plus one fp16 scale per block.

    Options (keyword-only; :class:`lila_codec.block.BlockCodec` says how ``bits``,
    ``block``, ``rotation`` and ``dither`` trade error against traffic):

    * ``bits``: 2–8 code bits per coordinate (default 4).
    * ``block``: coordinates per scale, a multiple of 24 (default 96: 16/96 bits of scale
      per coordinate).
    * ``scale_candidates``: 1–16 scales tried per block (default 3), from the most
      aggressive to the safe one; the block keeps the one with the smallest error. Each
      candidate costs one more Leech nearest-point pass over the data, the expensive part:
      this codec is much slower than E8, so keep it low (1 is the safe scale alone, with
      more error).
    * ``rotation``: Hadamard size, a power of two dividing the block; ``None`` (default)
      picks the largest (32 for 96), ``0`` turns rotation off.
    * ``dither``: subtractive dither over the Voronoi cell of √8·Λ24 (default off).

    ``python -m bench.codec`` measures its error and speed next to E8's.
    """

    def __init__(
        self,
        *,
        bits: int = DEFAULT_BITS,
        block: int = DEFAULT_BLOCK,
        scale_candidates: int = DEFAULT_SCALE_CANDIDATES,
        rotation: int | None = None,
        dither: bool = False,
    ) -> None:
        super().__init__(
            bits=bits, block=block, rotation=rotation, dither=dither, scale_candidates=scale_candidates
        )
        self.rhos = candidate_rhos(scale_candidates, bits=bits, dither=self.dither)

    # ---- encoding --------------------------------------------------------------------------
    def _blocks(self, y: torch.Tensor) -> Blocks:
        nb, m = y.numel() // self.block, self.block // LEECH_DIM
        vectors = y.cpu().view(nb, m, LEECH_DIM)  # [nb, m, 24]; the Leech kernel runs on the CPU
        norms = vectors.norm(dim=-1).amax(-1) if nb else torch.zeros(0)  # [nb]
        bound = float(norms.max()) / (self.q * min(self.rhos)) if nb else 0.0
        return Blocks(vectors, norms, bound)

    def _encode_chunk(
        self, blocks: torch.Tensor, peaks: torch.Tensor | None, u: torch.Tensor | None, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[n, m, 24]`` uint8 and fp16 scales ``[n]`` for vectors ``blocks[n, m, 24]`` of norms ``peaks``."""
        assert peaks is not None  # _blocks always gives the block norms
        y, norms, q = blocks, peaks, self.q
        best_err = torch.full_like(norms, math.inf)
        best_v = torch.zeros_like(y)
        best_s16 = torch.zeros(norms.shape, dtype=torch.float16)
        inscribed2 = (q * PACKING_RADIUS) ** 2
        for rho in self.rhos:
            s16 = blockscale.fp16_round_up(norms * (1.0 / (q * rho * unit)))
            s = (s16.to(torch.float32) * unit).view(-1, 1, 1)  # [n, 1, 1]
            z = y / torch.where(s > 0, s, torch.ones_like(s))
            if u is not None:
                z = z + u
            v = nearest_leech(z)
            # Vectors outside the inscribed ball: check what the decoder would return.
            ok = torch.ones(v.shape[:-1], dtype=torch.bool)  # [n, m]
            edge = v.square().sum(-1) >= inscribed2
            if bool(edge.any()):
                ve = v[edge]
                ok[edge] = (representatives(coords_mod(ve, q), q, self.bits) == ve.to(torch.float64)).all(-1)
            rec = v if u is None else v - u
            err = (y - s * rec).square().sum((1, 2))  # [n]
            better = ok.all(-1) & (err < best_err)
            best_err = torch.where(better, err, best_err)
            best_s16 = torch.where(better, s16, best_s16)
            best_v = torch.where(better.view(-1, 1, 1), v, best_v)
        if not bool(torch.isfinite(best_err).all()):
            raise CodecError("internal: no in-range Leech scale candidate for a block (please report this)")
        return coords_mod(best_v, q).to(torch.uint8), best_s16

    @classmethod
    def _dither(cls, seed: int, block: int, start: int, stop: int) -> torch.Tensor:
        """Dither uniform over the Voronoi cell of √8·Λ24 for blocks start..stop, float64 ``[n, m, 24]``."""
        n = stop - start
        u01 = uniform01(seed, n * block, start=start * block)
        u01 = u01.view(n, block // LEECH_DIM, LEECH_DIM)  # [n, m, 24]
        return lattice_dither(u01, period=LEECH_DITHER_PERIOD, nearest=nearest_leech)

    # ---- decoding --------------------------------------------------------------------------
    @classmethod
    def _decode_points(cls, codes: torch.Tensor, bits: int) -> torch.Tensor:
        k = codes.view(-1, LEECH_DIM)  # [n · m, 24]
        points = representatives(k, 1 << bits, bits)  # [n · m, 24]
        return points.view(codes.shape[0], -1, LEECH_DIM)  # [n, m, 24]

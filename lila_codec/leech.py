# SPDX-License-Identifier: AGPL-3.0-or-later
"""Fixed-rate Leech-lattice Voronoi code Λ24 / 2^R·Λ24 (optional, higher gain than E8).

Same design as :mod:`lila_codec.e8`, with the 24-dimensional Leech lattice (scaled by
√8, integer coordinates, from :mod:`lila_model.lattice.leech`): per block one fp16 scale,
each 24-vector rounded to its nearest lattice point v and sent as its coset modulo
q·Λ24 (q = 2^R): exactly R bits per coordinate. Vectors are consecutive 24-coordinate
runs of the (rotated) block.

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

Tuning: ``bits`` 2–8, ``block`` a multiple of 24 (96 by default: 16/96 bits of scale per
coordinate), ``scale_candidates`` 1–8 (each costs one more Leech decode of the data, the
expensive part: this codec is several times slower than E8), ``rotation`` a power of two
dividing the block (32 for 96).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from lila_codec import blockscale, wire
from lila_codec.base import Codec, check_section, padded_length
from lila_codec.bitpack import pack_codes, packed_nbytes, unpack_codes
from lila_codec.dither import lattice_dither, uniform01
from lila_codec.errors import CodecError
from lila_codec.hadamard import check_rotation_size, rotate
from lila_model.lattice.leech import LEECH_DIM, leech_generator_matrix, nearest_leech

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8)
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
CHUNK_BLOCKS = 1024


def candidate_rhos(count: int, *, bits: int, dither: bool) -> tuple[float, ...]:
    """ρ values of the candidate scales s = n_max/(q·ρ), ending with the safe one."""
    if not 1 <= count <= MAX_SCALE_CANDIDATES:
        raise ValueError(f"scale_candidates must be in 1..{MAX_SCALE_CANDIDATES}, got {count}")
    q = 1 << bits
    safe = PACKING_RADIUS - (2 if dither else 1) * COVERING_RADIUS / q - SAFE_MARGIN
    if count == 1:
        return (safe,)
    step = (RHO_HIGH - safe) / (count - 1)
    return tuple(RHO_HIGH - step * i for i in range(count))


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


class LeechCodec(Codec):
    """Leech Voronoi code at ``bits`` bits per coordinate plus one fp16 scale per block."""

    name = "leech"

    def __init__(
        self,
        *,
        bits: int = DEFAULT_BITS,
        block: int = DEFAULT_BLOCK,
        rotation: int | None = None,
        dither: bool = False,
        scale_candidates: int = DEFAULT_SCALE_CANDIDATES,
    ) -> None:
        if bits not in ALLOWED_BITS:
            raise ValueError(f"leech bits must be one of {ALLOWED_BITS}, got {bits}")
        _check_block(block)
        if rotation is None:
            rotation = block & -block
        if rotation:
            check_rotation_size(rotation, block)
        self.bits = bits
        self.q = 1 << bits
        self.block = block
        self.rotation = rotation
        self.dither = bool(dither)
        self.rhos = candidate_rhos(scale_candidates, bits=bits, dither=self.dither)

    def __repr__(self) -> str:
        return (
            f"LeechCodec(bits={self.bits}, block={self.block}, rotation={self.rotation}, "
            f"dither={self.dither}, scale_candidates={len(self.rhos)})"
        )

    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        numel = flat.numel()
        length = padded_length(numel, self.block)
        y = flat if length == numel else torch.nn.functional.pad(flat, (0, length - numel))
        if self.rotation and length:
            y = rotate(y, seed=seed, size=self.rotation)
        y = y.cpu()
        nb, m = length // self.block, self.block // LEECH_DIM
        vectors = y.view(nb, m, LEECH_DIM)  # [nb, m, 24]
        norms = vectors.norm(dim=-1).amax(-1) if nb else torch.zeros(0)  # [nb]
        exponent = blockscale.choose_scale_exponent(
            float(norms.max()) / (self.q * min(self.rhos)) if nb else 0.0
        )
        unit = 2.0**exponent
        codes = torch.empty((nb, m, LEECH_DIM), dtype=torch.uint8)
        scales = torch.empty(nb, dtype=torch.float16)
        for start in range(0, nb, CHUNK_BLOCKS):
            stop = min(nb, start + CHUNK_BLOCKS)
            u = _leech_dither(seed, self.block, start, stop).to(torch.float32) if self.dither else None
            c, s16 = self._encode_blocks(vectors[start:stop], norms[start:stop], u, unit)
            codes[start:stop] = c
            scales[start:stop] = s16
        fields = dict(
            bits=self.bits,
            flags=(wire.FLAG_ROTATE if self.rotation else 0) | (wire.FLAG_DITHER if self.dither else 0),
            rotation=self.rotation,
            block=self.block,
            scale_exponent=exponent,
        )
        return fields, blockscale.scales_to_bytes(scales), pack_codes(codes.reshape(-1), self.bits)

    def _encode_blocks(
        self, y: torch.Tensor, norms: torch.Tensor, u: torch.Tensor | None, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[nb, m, 24]`` uint8 and fp16 scales ``[nb]`` for vectors ``y[nb, m, 24]``."""
        q = self.q
        best_err = torch.full_like(norms, math.inf)
        best_v = torch.zeros_like(y)
        best_s16 = torch.zeros(norms.shape, dtype=torch.float16)
        inscribed2 = (q * PACKING_RADIUS) ** 2
        for rho in self.rhos:
            s16 = blockscale.fp16_round_up(norms * (1.0 / (q * rho * unit)))
            s = (s16.to(torch.float32) * unit).view(-1, 1, 1)  # [nb, 1, 1]
            z = y / torch.where(s > 0, s, torch.ones_like(s))
            if u is not None:
                z = z + u
            v = nearest_leech(z)
            # Vectors outside the inscribed ball: check what the decoder would return.
            ok = torch.ones(v.shape[:-1], dtype=torch.bool)  # [nb, m]
            edge = v.square().sum(-1) >= inscribed2
            if bool(edge.any()):
                ve = v[edge]
                ok[edge] = (representatives(coords_mod(ve, q), q, self.bits) == ve.to(torch.float64)).all(-1)
            rec = v if u is None else v - u
            err = (y - s * rec).square().sum((1, 2))  # [nb]
            better = ok.all(-1) & (err < best_err)
            best_err = torch.where(better, err, best_err)
            best_s16 = torch.where(better, s16, best_s16)
            best_v = torch.where(better.view(-1, 1, 1), v, best_v)
        if not bool(torch.isfinite(best_err).all()):
            raise CodecError("internal: no in-range Leech scale candidate for a block (please report this)")
        return coords_mod(best_v, q).to(torch.uint8), best_s16

    def section_nbytes(self, numel: int) -> tuple[int, int]:
        length = padded_length(numel, self.block)
        return blockscale.SCALE_BYTES * (length // self.block), packed_nbytes(length, self.bits)

    @classmethod
    def _validate_header(cls, header: wire.Header) -> None:
        if header.bits not in ALLOWED_BITS:
            raise CodecError(f"leech payload declares {header.bits} bits; allowed: {ALLOWED_BITS}")
        try:
            _check_block(header.block)
            if header.rotation:
                check_rotation_size(header.rotation, header.block)
        except ValueError as exc:
            raise CodecError(f"leech payload header: {exc}") from None
        if header.rotate != bool(header.rotation):
            raise CodecError(
                f"leech payload: rotation flag {header.rotate} disagrees with rotation {header.rotation}"
            )
        length = padded_length(header.numel, header.block)
        check_section(
            header, (blockscale.SCALE_BYTES * (length // header.block), packed_nbytes(length, header.bits))
        )

    @classmethod
    def _decode_flat(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        length = padded_length(header.numel, header.block)
        nb = length // header.block
        s = blockscale.scales_from_bytes(scales, nb, header.scale_exponent)
        k = unpack_codes(codes, length, header.bits).view(-1, LEECH_DIM)  # [L / 24, 24]
        out = torch.empty(length, dtype=torch.float32)
        per_chunk = CHUNK_BLOCKS * header.block
        for start in range(0, length, per_chunk):
            stop = min(length, start + per_chunk)
            c = representatives(k[start // LEECH_DIM : stop // LEECH_DIM], 1 << header.bits, header.bits)
            if header.dither:
                c = c - _leech_dither(
                    header.seed, header.block, start // header.block, stop // header.block
                ).view(-1, LEECH_DIM)
            out[start:stop] = blockscale.exact_reconstruct(
                c.reshape(-1),
                s[start // header.block : stop // header.block],
                block=header.block,
                rotation=header.rotation,
                seed=header.seed,
            )
        return out[: header.numel]


def _leech_dither(seed: int, block: int, start_block: int, stop_block: int) -> torch.Tensor:
    """Dither uniform over the Voronoi cell of √8·Λ24, float64 ``[n, m, 24]``."""
    n = stop_block - start_block
    u01 = uniform01(seed, n * block, start=start_block * block).view(n, block // LEECH_DIM, LEECH_DIM)
    return lattice_dither(u01, period=LEECH_DITHER_PERIOD, nearest=nearest_leech)


def _check_block(block: int) -> None:
    if not isinstance(block, int) or block < LEECH_DIM or block % LEECH_DIM or block > wire.MAX_BLOCK:
        raise ValueError(f"leech block size must be a multiple of 24 in 24..{wire.MAX_BLOCK}, got {block}")

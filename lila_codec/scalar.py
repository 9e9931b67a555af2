# SPDX-License-Identifier: AGPL-3.0-or-later
"""Scalar baselines with the same interface: fp32, fp16 and block-scaled int-k.

``IntCodec`` ("int8", "int4", or "int" with ``bits``): per block of ``block`` values one
fp16 scale s and codes round(x/s) in [−2^(k−1), 2^(k−1)−1], stored as k-bit unsigned
values with the offset 2^(k−1). With ``scale_candidates=1`` the scale is the block's
absmax / (2^(k−1)−1) (plain symmetric "absmax" quantization, never clips); with more,
the encoder also tries smaller scales down to ``SCALE_SEARCH_LOW``·absmax, clipping to the
full range (the extra negative level included), and keeps the one with the smallest
block error (a tuned clipping scale: about +1 dB at 4 bits on Gaussian data).
Optional rotation and dither work as for the lattice codecs.

Tuning: block 32–128 (smaller adapts better but pays 16/block bits); 16 scale
candidates get nearly all of the tuned-scale gain; a very low search floor wastes
candidates on scales that clip too much.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lila_codec import blockscale, wire
from lila_codec.base import Codec, check_section, padded_length
from lila_codec.bitpack import pack_codes, packed_nbytes, unpack_codes
from lila_codec.dither import scalar_dither
from lila_codec.errors import CodecError
from lila_codec.hadamard import check_rotation_size, rotate

FP16_MAX = 65504.0
FP32_MAX = float(torch.finfo(torch.float32).max)
INT_ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8)
INT_DEFAULT_BLOCK = 64
MIN_BLOCK = 8
SCALE_SEARCH_LOW = 0.3  # smallest candidate scale, as a fraction of the absmax scale
MAX_SCALE_CANDIDATES = 64
CHUNK_BLOCKS = 1 << 13
_F32_LE = np.dtype("<f4")
_F16_LE = np.dtype("<f2")


class _RawFloatCodec(Codec):
    """Shared code of fp32 and fp16: the values themselves, little-endian."""

    np_dtype: np.dtype
    torch_dtype: torch.dtype
    limit: float

    @property
    def max_abs_input(self) -> float:
        return self.limit

    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        data = flat.to(self.torch_dtype).cpu().numpy().astype(self.np_dtype, copy=False).tobytes()
        fields = dict(bits=0, flags=0, rotation=0, block=0, scale_exponent=0)
        return fields, b"", data

    def section_nbytes(self, numel: int) -> tuple[int, int]:
        return 0, numel * self.np_dtype.itemsize

    @classmethod
    def _validate_header(cls, header: wire.Header) -> None:
        if header.bits or header.flags or header.rotation or header.block or header.scale_exponent:
            raise CodecError(
                f"{cls.name} payload must have bits/flags/rotation/block/scale exponent all 0, got "
                f"{header.bits}/{header.flags}/{header.rotation}/{header.block}/{header.scale_exponent}"
            )
        check_section(header, (0, header.numel * cls.np_dtype.itemsize))

    @classmethod
    def _decode_flat(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        values = np.frombuffer(codes, dtype=cls.np_dtype)
        if not np.isfinite(values).all():
            raise CodecError(f"{cls.name} payload contains non-finite values; the encoder never writes them")
        return torch.from_numpy(values.astype(np.float32))


class Fp32Codec(_RawFloatCodec):
    """Lossless for float32 input (32 bits per coordinate)."""

    name = "fp32"
    np_dtype = _F32_LE
    torch_dtype = torch.float32
    limit = FP32_MAX


class Fp16Codec(_RawFloatCodec):
    """IEEE half precision (16 bits per coordinate); values beyond ±65504 are refused."""

    name = "fp16"
    np_dtype = _F16_LE
    torch_dtype = torch.float16
    limit = FP16_MAX


class IntCodec(Codec):
    """Symmetric k-bit integers with one fp16 scale per block (absmax or searched scale)."""

    name = "int"

    def __init__(
        self,
        *,
        bits: int = 8,
        block: int = INT_DEFAULT_BLOCK,
        scale_candidates: int = 1,
        rotation: int = 0,
        dither: bool = False,
    ) -> None:
        if bits not in INT_ALLOWED_BITS:
            raise ValueError(f"int bits must be one of {INT_ALLOWED_BITS}, got {bits}")
        _check_block(block)
        if rotation:
            check_rotation_size(rotation, block)
        if not 1 <= scale_candidates <= MAX_SCALE_CANDIDATES:
            raise ValueError(f"scale_candidates must be in 1..{MAX_SCALE_CANDIDATES}, got {scale_candidates}")
        self.bits = bits
        self.qmax = (1 << (bits - 1)) - 1
        self.offset = 1 << (bits - 1)
        self.block = block
        self.rotation = rotation
        self.dither = bool(dither)
        # Fractions of the absmax scale to try, ending with 1 (never clips).
        if scale_candidates == 1:
            self.fractions: tuple[float, ...] = (1.0,)
        else:
            step = (1.0 - SCALE_SEARCH_LOW) / (scale_candidates - 1)
            self.fractions = tuple(SCALE_SEARCH_LOW + step * i for i in range(scale_candidates))

    def __repr__(self) -> str:
        return (
            f"IntCodec(bits={self.bits}, block={self.block}, scale_candidates={len(self.fractions)}, "
            f"rotation={self.rotation}, dither={self.dither})"
        )

    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        numel = flat.numel()
        length = padded_length(numel, self.block)
        y = flat if length == numel else torch.nn.functional.pad(flat, (0, length - numel))
        if self.rotation and length:
            y = rotate(y, seed=seed, size=self.rotation)
        blocks = y.view(-1, self.block)  # [nb, block]
        absmax = blocks.abs().amax(1) if length else torch.zeros(0)  # [nb]
        exponent = blockscale.choose_scale_exponent(float(absmax.max()) / self.qmax if length else 0.0)
        unit = 2.0**exponent
        nb = blocks.shape[0]
        codes = torch.empty((nb, self.block), dtype=torch.uint8)
        scales = torch.empty(nb, dtype=torch.float16)
        for start in range(0, nb, CHUNK_BLOCKS):
            stop = min(nb, start + CHUNK_BLOCKS)
            u = None
            if self.dither:
                u = scalar_dither(seed, (stop - start) * self.block, start=start * self.block)
                u = u.view(stop - start, self.block).to(device=flat.device, dtype=torch.float32)
            c, s16 = self._encode_blocks(blocks[start:stop], absmax[start:stop], u, unit)
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

    def _encode_blocks(
        self, x: torch.Tensor, absmax: torch.Tensor, u: torch.Tensor | None, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[nb, block]`` (uint8, offset by qmax) and fp16 scales ``[nb]`` for blocks ``x``."""
        best_err = torch.full_like(absmax, math.inf)
        best_q = torch.zeros_like(x)
        best_s16 = torch.zeros(absmax.shape, dtype=torch.float16, device=x.device)
        for frac in self.fractions:
            s16 = blockscale.fp16_round_up(absmax * (frac / (self.qmax * unit)))
            s = (s16.to(torch.float32) * unit).unsqueeze(1)  # [nb, 1]
            z = x / torch.where(s > 0, s, torch.ones_like(s))
            if u is not None:
                z = z + u
            qv = torch.round(z).clamp_(-self.offset, self.qmax)
            rec = qv if u is None else qv - u
            err = (x - s * rec).square().sum(1)  # [nb]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s16 = torch.where(better, s16, best_s16)
            best_q = torch.where(better.unsqueeze(1), qv, best_q)
        return (best_q + self.offset).to(torch.uint8), best_s16

    def section_nbytes(self, numel: int) -> tuple[int, int]:
        length = padded_length(numel, self.block)
        return blockscale.SCALE_BYTES * (length // self.block), packed_nbytes(length, self.bits)

    @classmethod
    def _validate_header(cls, header: wire.Header) -> None:
        if header.bits not in INT_ALLOWED_BITS:
            raise CodecError(f"int payload declares {header.bits} bits; allowed: {INT_ALLOWED_BITS}")
        try:
            _check_block(header.block)
            if header.rotation:
                check_rotation_size(header.rotation, header.block)
        except ValueError as exc:
            raise CodecError(f"int payload header: {exc}") from None
        if header.rotate != bool(header.rotation):
            raise CodecError(
                f"int payload: rotation flag {header.rotate} disagrees with rotation {header.rotation}"
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
        k = unpack_codes(codes, length, header.bits)
        c = k.to(torch.float64) - (1 << (header.bits - 1))
        if header.dither:
            c = c - scalar_dither(header.seed, length)
        return blockscale.exact_reconstruct(
            c, s, block=header.block, rotation=header.rotation, seed=header.seed
        )[: header.numel]


def _check_block(block: int) -> None:
    if not isinstance(block, int) or block < MIN_BLOCK or block % MIN_BLOCK or block > wire.MAX_BLOCK:
        raise ValueError(
            f"int block size must be a multiple of {MIN_BLOCK} in {MIN_BLOCK}..{wire.MAX_BLOCK}, got {block}"
        )

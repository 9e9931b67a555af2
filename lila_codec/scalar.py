# SPDX-License-Identifier: AGPL-3.0-or-later
"""Scalar baselines with the same interface: fp32, fp16 and block-scaled int-k.

``IntCodec`` ("int8", "int4", or "int" with ``bits``): per block of ``block`` values one
fp16 scale s and codes round(x/s) in [−2^(k−1), 2^(k−1)−1], stored as k-bit unsigned
values with the offset 2^(k−1). With ``scale_candidates=1`` the scale is the block's
absmax / (2^(k−1)−1) (plain symmetric "absmax" quantization, never clips); with more,
the encoder also tries smaller scales down to ``SCALE_SEARCH_LOW``·absmax, clipping to the
full range (the extra negative level included), and keeps the one with the smallest
block error (a tuned clipping scale: a clear gain over absmax at 4 bits and below on
Gaussian data). The padding, rotation, dither, scales and header are
:class:`lila_codec.block.BlockCodec`'s, as for the lattice codecs.

Tuning: see :class:`IntCodec`; a very low search floor (``SCALE_SEARCH_LOW``) wastes
candidates on scales that clip too much. ``python -m bench.codec`` measures int8, int4 and
int2 with absmax and with 16 searched scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lila_codec import blockscale, wire
from lila_codec.base import Codec, check_section
from lila_codec.block import BlockCodec, Blocks
from lila_codec.dither import scalar_dither
from lila_codec.errors import CodecError

FP16_MAX = 65504.0
FP32_MAX = float(torch.finfo(torch.float32).max)
INT_ALLOWED_BITS = BlockCodec.allowed_bits
INT_DEFAULT_BLOCK = 64
MIN_BLOCK = 8
SCALE_SEARCH_LOW = 0.3  # smallest candidate scale, as a fraction of the absmax scale
MAX_SCALE_CANDIDATES = 64
CHUNK_BLOCKS = 1 << 13  # blocks per encoder/decoder chunk (speed and memory only, never the payload)
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


class IntCodec(BlockCodec, name="int", block_multiple=MIN_BLOCK, chunk_blocks=CHUNK_BLOCKS):
    """Symmetric k-bit integers with one fp16 scale per block (absmax or searched scale).

    Options (keyword-only; :class:`lila_codec.block.BlockCodec` says how ``bits``,
    ``block``, ``rotation`` and ``dither`` trade error against traffic):

    * ``bits``: 2–8 bits per coordinate (default 8; ``int8`` and ``int4`` fix it).
    * ``block``: coordinates per scale, a multiple of 8 (default 64); 32–128 is the
      usual range.
    * ``scale_candidates``: 1–64 (default 1). 1 is plain absmax scaling, which never
      clips; more candidates search clipping scales down to ``SCALE_SEARCH_LOW`` of it
      and keep the one with the smallest block error: a clear gain at low bit widths.
      16 get nearly all of the gain; each candidate is one more pass over the data.
    * ``rotation``: Hadamard size, a power of two dividing the block; ``0`` (default)
      turns rotation off, ``None`` picks the largest power of two dividing the block.
    * ``dither``: subtractive dither uniform on [−½, ½) (default off).

    ``python -m bench.codec`` measures absmax and 16 searched scales at 2 and 4 bits.
    """

    def __init__(
        self,
        *,
        bits: int = 8,
        block: int = INT_DEFAULT_BLOCK,
        scale_candidates: int = 1,
        rotation: int | None = 0,
        dither: bool = False,
    ) -> None:
        super().__init__(
            bits=bits, block=block, rotation=rotation, dither=dither, scale_candidates=scale_candidates
        )
        self.offset = self.q >> 1  # codes are stored as value + offset, values in [−offset, offset − 1]
        self.qmax = self.offset - 1
        # Fractions of the absmax scale to try, ending with (about) 1: absmax, never clips.
        self.fractions = blockscale.candidate_grid(
            SCALE_SEARCH_LOW, 1.0, scale_candidates, maximum=MAX_SCALE_CANDIDATES
        )

    # ---- encoding --------------------------------------------------------------------------
    def _blocks(self, y: torch.Tensor) -> Blocks:
        blocks = y.view(-1, self.block)  # [nb, block]
        absmax = blocks.abs().amax(1) if y.numel() else torch.zeros(0)  # [nb]
        return Blocks(blocks, absmax, float(absmax.max()) / self.qmax if y.numel() else 0.0)

    def _encode_chunk(
        self, blocks: torch.Tensor, peaks: torch.Tensor | None, u: torch.Tensor | None, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[n, block]`` (uint8, offset by 2^(k−1)) and fp16 scales ``[n]`` for blocks of absmax ``peaks``."""
        assert peaks is not None  # _blocks always gives the block absmax
        x, absmax = blocks, peaks
        best_err = torch.full_like(absmax, math.inf)
        best_q = torch.zeros_like(x)
        best_s16 = torch.zeros(absmax.shape, dtype=torch.float16, device=x.device)
        for frac in self.fractions:
            s16 = blockscale.fp16_round_up(absmax * (frac / (self.qmax * unit)))
            s = (s16.to(torch.float32) * unit).unsqueeze(1)  # [n, 1]
            z = x / torch.where(s > 0, s, torch.ones_like(s))
            if u is not None:
                z = z + u
            qv = torch.round(z).clamp_(-self.offset, self.qmax)
            rec = qv if u is None else qv - u
            err = (x - s * rec).square().sum(1)  # [n]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s16 = torch.where(better, s16, best_s16)
            best_q = torch.where(better.unsqueeze(1), qv, best_q)
        return (best_q + self.offset).to(torch.uint8), best_s16

    @classmethod
    def _dither(cls, seed: int, block: int, start: int, stop: int) -> torch.Tensor:
        """Dither uniform on [−½, ½) for blocks start..stop, float64 ``[n, block]``."""
        u = scalar_dither(seed, (stop - start) * block, start=start * block)
        return u.view(stop - start, block)  # [n, block]

    # ---- decoding --------------------------------------------------------------------------
    @classmethod
    def _decode_points(cls, codes: torch.Tensor, bits: int) -> torch.Tensor:
        return codes.to(torch.float64) - (1 << (bits - 1))  # [n, block]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The block-scaled codec: the plumbing the E8, Leech and int codecs share around their kernels.

Encoding pads the flat tensor to whole blocks of ``block`` coordinates, optionally
rotates it (seeded Hadamard, :mod:`lila_codec.hadamard`), picks the payload's scale
exponent (:mod:`lila_codec.blockscale`), and hands the blocks, chunk by chunk and with
their subtractive dither (:mod:`lila_codec.dither`), to the codec's kernel, which returns
``bits``-bit codes and one fp16 scale per block. Decoding reads every parameter from the
header, asks the kernel for each code's point, subtracts the same dither and rebuilds the
values exactly (:func:`lila_codec.blockscale.exact_reconstruct`).

A subclass supplies only its kernel: the block layout it works in (:meth:`BlockCodec._blocks`),
the encoder of a chunk of blocks (:meth:`BlockCodec._encode_chunk`), the points of a
chunk of codes (:meth:`BlockCodec._decode_points`), its dither (:meth:`BlockCodec._dither`),
and its option checks.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch

from lila_codec import blockscale, wire
from lila_codec.base import Codec, check_section, padded_length
from lila_codec.bitpack import pack_codes, packed_nbytes, unpack_codes
from lila_codec.errors import CodecError
from lila_codec.hadamard import check_rotation_size, rotate

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8)


class Blocks(NamedTuple):
    """The padded, rotated coordinates of one tensor, laid out for a codec's kernel."""

    data: torch.Tensor  # [nb, ...]: block i is data[i], in the kernel's layout
    peaks: torch.Tensor | None  # [nb] per-block size the kernel's scale candidates start from, or None
    scale_bound: float  # at least every block's scale (0 for no blocks): picks the payload's exponent


class BlockCodec(Codec):
    """A codec that sends ``bits``-bit codes plus one fp16 scale per block of ``block`` coordinates.

    A subclass names itself in its class statement: ``class XCodec(BlockCodec, name="x",
    block_multiple=8, chunk_blocks=2048)``: its wire name, the multiple its block sizes
    must be (its kernel's vector length), and the blocks per chunk its encoder and decoder
    work on (speed and memory only, never the payload: larger chunks use more memory and,
    on a CPU, fall out of cache; smaller ones add per-chunk overhead).

    Options shared by every block codec (keyword-only; each subclass gives its defaults
    and ``repr`` shows its options in the order of its constructor):

    * ``bits``: code bits per coordinate, in ``allowed_bits`` (2–8). More bits,
      less error, more traffic: each extra bit costs one bit per coordinate and buys about
      6 dB of signal-to-noise ratio (``python -m bench.codec`` measures each rate).
    * ``block``: coordinates per fp16 scale, a multiple of the subclass's ``block_multiple``.
      A block pays 16/``block`` bits per coordinate of scale. Smaller blocks follow the
      data's local magnitude better (less error on uneven data) but pay more scale bits;
      64–128 is the usual range. A bad setting: the smallest block (8) spends two whole
      bits per coordinate on scales.
    * ``rotation``: the size of the seeded Hadamard rotation applied to each block before
      quantizing, a power of two dividing ``block``; ``0`` turns it off; ``None`` picks the
      largest power of two dividing the block. Rotation makes heavy-tailed data
      (pseudo-gradients, weights) look Gaussian, which is what the codes are tuned for;
      leave it on unless the data is already Gaussian. A bad setting: a tiny rotation
      (2–8) barely mixes anything. ``tests/unit/codec/test_roundtrip.py`` checks the gain
      on heavy-tailed data.
    * ``dither``: subtractive dither drawn from the seed (:mod:`lila_codec.dither`). The
      error becomes zero-mean and independent of the data (so averages over peers stay
      unbiased) at the price of a somewhat larger error per payload; turn it on when the
      bias of plain rounding matters more than the extra error.
      ``tests/unit/codec/test_voronoi.py`` checks the bias with and without it.
    """

    allowed_bits: ClassVar[tuple[int, ...]] = ALLOWED_BITS
    block_multiple: ClassVar[int]
    chunk_blocks: ClassVar[int]

    def __init_subclass__(cls, *, name: str, block_multiple: int, chunk_blocks: int, **kwargs: Any) -> None:
        """Take the subclass's wire name, block multiple and chunk size from its class statement."""
        super().__init_subclass__(**kwargs)
        cls.name = name
        cls.block_multiple = block_multiple
        cls.chunk_blocks = chunk_blocks

    def __init__(
        self, *, bits: int, block: int, rotation: int | None, dither: bool, scale_candidates: int
    ) -> None:
        if bits not in self.allowed_bits:
            raise ValueError(f"{self.name} bits must be one of {self.allowed_bits}, got {bits}")
        self._check_block(block)
        if rotation is None:
            rotation = block & -block  # the largest power of two dividing the block
        if rotation:
            check_rotation_size(rotation, block)
        self.bits = bits
        self.q = 1 << bits  # code values per coordinate
        self.block = block
        self.rotation = rotation
        self.dither = bool(dither)
        self.scale_candidates = scale_candidates  # checked by the subclass, which builds its grid

    def __repr__(self) -> str:
        """``XCodec(option=value, ...)`` with every constructor option, in the constructor's order."""
        names = inspect.signature(type(self).__init__).parameters
        options = ", ".join(f"{key}={getattr(self, key)}" for key in names if key != "self")
        return f"{type(self).__name__}({options})"

    @classmethod
    def _check_block(cls, block: int) -> None:
        unit = cls.block_multiple
        if not isinstance(block, int) or block < unit or block % unit or block > wire.MAX_BLOCK:
            raise ValueError(
                f"{cls.name} block size must be a multiple of {unit} in {unit}..{wire.MAX_BLOCK}, got {block}"
            )

    # ---- encoding --------------------------------------------------------------------------
    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        numel = flat.numel()
        length = padded_length(numel, self.block)
        y = flat if length == numel else torch.nn.functional.pad(flat, (0, length - numel))
        if self.rotation and length:
            y = rotate(y, seed=seed, size=self.rotation)
        blocks = self._blocks(y)
        exponent = blockscale.choose_scale_exponent(blocks.scale_bound)
        unit = 2.0**exponent
        nb = length // self.block
        codes = torch.empty(blocks.data.shape, dtype=torch.uint8)  # [nb, ...] in the kernel's layout
        scales = torch.empty(nb, dtype=torch.float16)
        start = 0
        while start < nb:
            stop = min(nb, start + self._encode_chunk_blocks())  # asked per chunk: e8 may fall back to eager
            u = None
            if self.dither:
                u = self._dither(seed, self.block, start, stop)
                u = u.to(device=blocks.data.device, dtype=torch.float32)
            peaks = None if blocks.peaks is None else blocks.peaks[start:stop]
            c, s16 = self._encode_chunk(blocks.data[start:stop], peaks, u, unit)
            codes[start:stop] = c.cpu()
            scales[start:stop] = s16.cpu()
            start = stop
        fields = dict(
            bits=self.bits,
            flags=(wire.FLAG_ROTATE if self.rotation else 0) | (wire.FLAG_DITHER if self.dither else 0),
            rotation=self.rotation,
            block=self.block,
            scale_exponent=exponent,
        )
        flat_codes = codes.reshape(-1)  # [nb · block]: block by block, coordinates in the kernel's order
        return fields, blockscale.scales_to_bytes(scales), pack_codes(flat_codes, self.bits)

    def _encode_chunk_blocks(self) -> int:
        return self.chunk_blocks

    @abstractmethod
    def _blocks(self, y: torch.Tensor) -> Blocks:
        """Lay out the padded, rotated coordinates ``y[nb · block]`` for the kernel."""

    @abstractmethod
    def _encode_chunk(
        self, blocks: torch.Tensor, peaks: torch.Tensor | None, u: torch.Tensor | None, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (uint8, the layout of ``blocks``) and fp16 scales ``[n]`` of a chunk of n blocks.

        ``u`` is the chunk's float32 dither (None without dither), ``unit`` the payload's
        scale unit 2**exponent: a block's scale is its fp16 value times ``unit``.
        """

    @classmethod
    @abstractmethod
    def _dither(cls, seed: int, block: int, start: int, stop: int) -> torch.Tensor:
        """float64 dither of blocks start..stop, in the kernel's layout ``[stop − start, ...]``."""

    # ---- sizes -----------------------------------------------------------------------------
    def section_nbytes(self, numel: int) -> tuple[int, int]:
        return _sections(numel, self.block, self.bits)

    # ---- decoding --------------------------------------------------------------------------
    @classmethod
    def _validate_header(cls, header: wire.Header) -> None:
        if header.bits not in cls.allowed_bits:
            raise CodecError(
                f"{cls.name} payload declares {header.bits} bits per coordinate; allowed: {cls.allowed_bits}"
            )
        try:
            cls._check_block(header.block)
            if header.rotation:
                check_rotation_size(header.rotation, header.block)
        except ValueError as exc:
            raise CodecError(f"{cls.name} payload header: {exc}") from None
        if header.rotate != bool(header.rotation):
            raise CodecError(
                f"{cls.name} payload: rotation flag {header.rotate} disagrees with rotation {header.rotation}"
            )
        check_section(header, _sections(header.numel, header.block, header.bits))

    @classmethod
    def _decode_flat(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        block = header.block
        length = padded_length(header.numel, block)
        nb = length // block
        s = blockscale.scales_from_bytes(scales, nb, header.scale_exponent)  # [nb]
        k = unpack_codes(codes, length, header.bits).view(nb, block)  # [nb, block]
        out = torch.empty(length, dtype=torch.float32)
        for start in range(0, nb, cls.chunk_blocks):
            stop = min(nb, start + cls.chunk_blocks)
            c = cls._decode_points(k[start:stop], header.bits)  # [n, ...] in the kernel's layout
            if header.dither:
                c = c - cls._dither(header.seed, block, start, stop)
            c = c.reshape(-1)  # [n · block]: the chunk's coordinates in order
            out[start * block : stop * block] = blockscale.exact_reconstruct(
                c, s[start:stop], block=block, rotation=header.rotation, seed=header.seed
            )
        return out[: header.numel]

    @classmethod
    @abstractmethod
    def _decode_points(cls, codes: torch.Tensor, bits: int) -> torch.Tensor:
        """The decoder's point of every code of ``codes[n, block]`` (uint8), exact float64, in the kernel's layout."""


def _sections(numel: int, block: int, bits: int) -> tuple[int, int]:
    """(scales, codes) section sizes: one fp16 scale per block, ``bits`` bits per padded coordinate."""
    length = padded_length(numel, block)
    return blockscale.SCALE_BYTES * (length // block), packed_nbytes(length, bits)

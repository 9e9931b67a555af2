# SPDX-License-Identifier: AGPL-3.0-or-later
"""The codec interface shared by every scheme, and the checks every encoder applies."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from lila_codec import wire
from lila_codec.errors import CodecError

# Coordinates whose magnitude is above this are refused by the block-scaled codecs: the
# per-payload scale exponent would leave its range. Pseudo-gradients and weights are
# many orders of magnitude below it.
MAX_ABS_INPUT = 2.0**64


class Codec(ABC):
    """Encode a float tensor to self-describing bytes and back.

    ``encode(tensor, *, seed=0) -> bytes``; ``decode(payload) -> Tensor`` returns a CPU
    tensor of the original shape and dtype. Decoding reads every parameter from the
    payload's header (so any instance of a codec decodes any payload of that codec),
    is deterministic, and gives bitwise identical tensors on every machine for the
    same bytes. Every decoding failure raises :class:`CodecError`.
    """

    name: ClassVar[str]

    @property
    def codec_id(self) -> int:
        return wire.CODEC_IDS[self.name]

    # ---- encoding --------------------------------------------------------------------------
    def encode(self, tensor: torch.Tensor, *, seed: int = 0) -> bytes:
        """Encode ``tensor`` (any shape, float dtype, finite values). ``seed`` drives rotation and dither."""
        flat = self._prepare(tensor, seed)
        fields, scales, codes = self._encode_flat(flat, seed)
        return self._pack(tensor, seed, fields, scales, codes)[1]

    def _pack(self, tensor: torch.Tensor, seed: int, fields: dict, scales: bytes,
              codes: bytes) -> tuple[wire.Header, bytes]:
        """The header of ``tensor``'s payload and the payload (header, scales, codes)."""
        header = wire.Header(
            codec_id=self.codec_id,
            dtype=tensor.dtype,
            shape=tuple(tensor.shape),
            seed=seed,
            scales_nbytes=len(scales),
            codes_nbytes=len(codes),
            **fields,
        )
        return header, wire.pack_payload(header, scales, codes)

    def _prepare(self, tensor: torch.Tensor, seed: int) -> torch.Tensor:
        """``tensor`` checked (type, dtype, size, finite, magnitude) and flattened to float32; ``seed`` checked."""
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"codec {self.name!r} encodes torch tensors, got {type(tensor).__name__}")
        if tensor.dtype not in wire.DTYPE_CODES:
            raise CodecError(
                f"codec {self.name!r} encodes float tensors ({', '.join(map(str, wire.DTYPE_CODES))}), "
                f"got {tensor.dtype}; convert with .float()"
            )
        if tensor.dim() > wire.MAX_NDIM:
            raise CodecError(
                f"tensor has {tensor.dim()} dimensions, the limit is {wire.MAX_NDIM}; reshape it"
            )
        if tensor.numel() > wire.MAX_ELEMENTS:
            raise CodecError(
                f"tensor has {tensor.numel()} elements, the limit is {wire.MAX_ELEMENTS}; split it"
            )
        flat = tensor.detach().reshape(-1).to(torch.float32)
        if flat.numel():
            finite = torch.isfinite(flat)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CodecError(
                    f"input has {bad} non-finite values (NaN or ±Inf) out of {flat.numel()}; a lossy codec "
                    "cannot represent them. Find where they come from (diverged step, overflow) and skip or "
                    "repair this update before encoding"
                )
            peak = float(flat.abs().max())
            if peak > self.max_abs_input:
                raise CodecError(
                    f"input magnitude {peak:.3g} exceeds codec {self.name!r}'s limit {self.max_abs_input:.3g}; "
                    "rescale the tensor or use the fp32 codec"
                )
        if not isinstance(seed, int) or not 0 <= seed <= wire.MAX_SEED:
            raise CodecError(f"seed must be an int in 0..2**64-1, got {seed!r}")
        return flat

    @property
    def max_abs_input(self) -> float:
        return MAX_ABS_INPUT

    @abstractmethod
    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        """Encode a flat finite float32 tensor: (header fields, scales bytes, codes bytes)."""

    # ---- decoding --------------------------------------------------------------------------
    def decode(self, payload: bytes | bytearray | memoryview, *, expected_numel: int | None = None) -> torch.Tensor:
        """Decode a payload produced by this codec (any options). Raises CodecError on any problem.

        ``expected_numel``: refuse, before anything is decoded, a payload that declares another element
        count (a receiver that knows the size of what it waits for must pass it: a forged count makes the
        decoder allocate for values that were never sent)."""
        header, scales, codes = wire.parse_payload(payload)
        check_numel(header, expected_numel)
        if header.codec_id != self.codec_id:
            raise CodecError(
                f"payload was encoded with codec {header.codec_name!r}, not {self.name!r}; "
                "decode it with lila_codec.decode(payload)"
            )
        return self.decode_parsed(header, scales, codes)

    @classmethod
    def decode_parsed(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        """Decode an already framed and CRC-checked payload."""
        cls._validate_header(header)
        flat = cls._decode_flat(header, scales, codes)
        out = flat.reshape(header.shape).to(header.dtype)
        if out.numel() and not bool(torch.isfinite(out).all()):
            raise CodecError(
                f"payload decodes to values that overflow {header.dtype} (scale exponent "
                f"{header.scale_exponent}); the encoder never writes such payloads"
            )
        return out

    @classmethod
    @abstractmethod
    def _validate_header(cls, header: wire.Header) -> None:
        """Raise CodecError unless every codec-specific field and section length is valid."""

    @classmethod
    @abstractmethod
    def _decode_flat(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        """A flat float32 CPU tensor of ``header.numel`` values."""

    # ---- sizes -----------------------------------------------------------------------------
    @abstractmethod
    def section_nbytes(self, numel: int) -> tuple[int, int]:
        """(scales, codes) section sizes for a tensor of ``numel`` elements."""

    def encoded_nbytes(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Exact payload size for a tensor of this shape (header and CRC included)."""
        scales, codes = self.section_nbytes(math.prod(shape))
        return wire.total_nbytes(len(shape), scales, codes)

    def bits_per_coord(self, numel: int) -> float:
        """Scale + code bits per coordinate (padding included, fixed header excluded)."""
        if numel <= 0:
            raise ValueError(f"numel must be positive, got {numel}")
        scales, codes = self.section_nbytes(numel)
        return 8.0 * (scales + codes) / numel


def check_numel(header: wire.Header, expected_numel: int | None) -> None:
    """Raise CodecError unless the header declares ``expected_numel`` elements (None: any count)."""
    if expected_numel is not None and header.numel != expected_numel:
        raise CodecError(
            f"payload declares {header.numel} elements, the receiver expects {expected_numel}; "
            "the sender encoded another slice or forged the header"
        )


def check_section(header: wire.Header, expected: tuple[int, int]) -> None:
    """Raise CodecError unless the header's section sizes equal ``expected`` (scales, codes)."""
    actual = (header.scales_nbytes, header.codes_nbytes)
    if actual != expected:
        raise CodecError(
            f"{header.codec_name} payload for {header.numel} elements must have scales/codes sections of "
            f"{expected[0]}/{expected[1]} bytes, header declares {actual[0]}/{actual[1]}"
        )


def padded_length(numel: int, block: int) -> int:
    """``numel`` rounded up to a multiple of ``block``."""
    return -(-numel // block) * block

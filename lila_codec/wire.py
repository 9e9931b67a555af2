# SPDX-License-Identifier: AGPL-3.0-or-later
"""The versioned wire format of an encoded tensor.

Layout (little-endian), version 1::

    offset  size  field
    0       4     magic b"LILC"
    4       1     version (1)
    5       1     codec id (see CODEC_IDS)
    6       1     bits per coordinate of the codes (0 where the codec has none)
    7       1     flags (bit 0: randomized Hadamard rotation, bit 1: subtractive dither)
    8       1     dtype of the original tensor (see DTYPE_CODES)
    9       1     ndim
    10      2     rotation size (0 without rotation)
    12      4     block size (coordinates per scale; 0 where the codec has no blocks)
    16      2     scale exponent e (signed): a block's scale is fp16 value · 2**e
    18      2     reserved, must be 0
    20      8     seed (rotation signs and dither)
    28      8     number of elements
    36      8     scales section length in bytes
    44      8     codes section length in bytes
    52      8·ndim shape
    ...           scales section, codes section
    end−4   4     CRC32 of every byte before it

:func:`parse_payload` checks, in this order, the minimum length, the magic, the
version, the declared lengths against the actual length (so a forged header can
never make the decoder allocate more than the payload's own size justifies), the
CRC32, and then every field's range. Codec-specific checks (allowed bits, block
sizes, section lengths for the element count) are done by the codec.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import torch

from lila_codec.errors import CodecError

MAGIC = b"LILC"
WIRE_VERSION = 1
SUPPORTED_VERSIONS = (WIRE_VERSION,)

FLAG_ROTATE = 1
FLAG_DITHER = 2
KNOWN_FLAGS = FLAG_ROTATE | FLAG_DITHER

CODEC_IDS: dict[str, int] = {
    "fp32": 1,
    "fp16": 2,
    "int": 3,
    "e8": 4,
    "leech": 5,
    "sparse-int": 6,
    "sparse-e8": 7,
}
CODEC_BY_ID: dict[int, str] = {v: k for k, v in CODEC_IDS.items()}  # wire id -> codec family name

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
}
DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}

# Hard limits. A payload is rejected before any allocation if it breaks one of them.
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 34  # 17 G coordinates: far above any single pseudo-gradient slice
MAX_SCALE_EXPONENT = 100  # |e|: keeps fp16 · 2**e · code finite in float32
MAX_ROTATION = 1 << 12
MAX_BLOCK = 1 << 16
MAX_SEED = (1 << 64) - 1

_FIXED = struct.Struct("<4sBBBBBBHIhHQQQQ")
_DIM = struct.Struct("<Q")
_CRC = struct.Struct("<I")
HEADER_BYTES = _FIXED.size
CRC_BYTES = _CRC.size


@dataclass(frozen=True)
class Header:
    """The decoded header fields of a payload (see the module docstring)."""

    codec_id: int
    bits: int
    flags: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    rotation: int
    block: int
    scale_exponent: int
    seed: int
    scales_nbytes: int
    codes_nbytes: int
    version: int = WIRE_VERSION

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rotate(self) -> bool:
        return bool(self.flags & FLAG_ROTATE)

    @property
    def dither(self) -> bool:
        return bool(self.flags & FLAG_DITHER)

    @property
    def codec_name(self) -> str:
        return CODEC_BY_ID[self.codec_id]


def total_nbytes(ndim: int, scales_nbytes: int, codes_nbytes: int) -> int:
    """Size of a payload with these sections."""
    return HEADER_BYTES + _DIM.size * ndim + scales_nbytes + codes_nbytes + CRC_BYTES


def pack_payload(header: Header, scales: bytes, codes: bytes) -> bytes:
    """Serialize a header and its two sections, appending the CRC32."""
    if len(scales) != header.scales_nbytes or len(codes) != header.codes_nbytes:
        raise CodecError(
            f"internal: section lengths {len(scales)}/{len(codes)} differ from the header's "
            f"{header.scales_nbytes}/{header.codes_nbytes}"
        )
    if not 0 <= header.seed <= MAX_SEED:
        raise CodecError(f"seed must be in 0..2**64-1, got {header.seed}")
    fixed = _FIXED.pack(
        MAGIC,
        header.version,
        header.codec_id,
        header.bits,
        header.flags,
        DTYPE_CODES[header.dtype],
        len(header.shape),
        header.rotation,
        header.block,
        header.scale_exponent,
        0,
        header.seed,
        header.numel,
        header.scales_nbytes,
        header.codes_nbytes,
    )
    body = b"".join([fixed, *(_DIM.pack(d) for d in header.shape), scales, codes])
    return body + _CRC.pack(zlib.crc32(body))


def parse_payload(payload: bytes | bytearray | memoryview) -> tuple[Header, memoryview, memoryview]:
    """Validate a payload's framing and generic fields; return (header, scales, codes)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"a payload must be bytes, got {type(payload).__name__}")
    view = memoryview(payload).cast("B")
    size = len(view)
    if size < HEADER_BYTES + CRC_BYTES:
        raise CodecError(
            f"payload truncated: {size} bytes, shorter than the {HEADER_BYTES + CRC_BYTES}-byte minimum "
            "(header + CRC); the sender's payload did not arrive whole"
        )
    (magic, version, codec_id, bits, flags, dtype_code, ndim, rotation, block, scale_exponent, reserved,
     seed, numel, scales_nbytes, codes_nbytes) = _FIXED.unpack_from(view, 0)  # fmt: skip
    if magic != MAGIC:
        raise CodecError(f"not a LILA codec payload: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CodecError(
            f"unsupported wire version {version}; this build reads versions {SUPPORTED_VERSIONS}. "
            "Upgrade lila-network on the older side"
        )
    if ndim > MAX_NDIM:
        raise CodecError(f"header declares ndim {ndim}, above the limit of {MAX_NDIM}")
    if scales_nbytes > size or codes_nbytes > size:
        raise CodecError(
            f"header declares sections of {scales_nbytes} + {codes_nbytes} bytes in a {size}-byte payload "
            "(truncated or corrupt)"
        )
    expected = total_nbytes(ndim, scales_nbytes, codes_nbytes)
    if size < expected:
        raise CodecError(f"payload truncated: {size} bytes, the header declares {expected}")
    if size > expected:
        raise CodecError(f"payload oversized: {size} bytes, the header declares {expected} (trailing data)")
    body_end = size - CRC_BYTES
    (crc,) = _CRC.unpack_from(view, body_end)
    actual_crc = zlib.crc32(view[:body_end])
    if crc != actual_crc:
        raise CodecError(
            f"payload corrupt: CRC32 {actual_crc:#010x} does not match the stored {crc:#010x}; "
            "the bytes were damaged in transit or storage"
        )
    shape = tuple(_DIM.unpack_from(view, HEADER_BYTES + _DIM.size * i)[0] for i in range(ndim))
    if codec_id not in CODEC_BY_ID:
        raise CodecError(f"unknown codec id {codec_id}; known: {CODEC_IDS}")
    if dtype_code not in DTYPES:
        raise CodecError(f"unknown dtype code {dtype_code}; known: {DTYPE_CODES}")
    if flags & ~KNOWN_FLAGS:
        raise CodecError(f"unknown flag bits {flags & ~KNOWN_FLAGS:#x} in flags {flags:#x}")
    if reserved != 0:
        raise CodecError(f"reserved header field is {reserved}, must be 0")
    if numel > MAX_ELEMENTS or any(d > MAX_ELEMENTS for d in shape):
        raise CodecError(f"shape {shape} / {numel} elements is above the limit of {MAX_ELEMENTS} elements")
    if math.prod(shape) != numel:
        raise CodecError(f"shape {shape} does not match the declared element count {numel}")
    if abs(scale_exponent) > MAX_SCALE_EXPONENT:
        raise CodecError(f"scale exponent {scale_exponent} outside ±{MAX_SCALE_EXPONENT}")
    if rotation > MAX_ROTATION or block > MAX_BLOCK:
        raise CodecError(f"rotation {rotation} / block {block} above the limits {MAX_ROTATION} / {MAX_BLOCK}")
    header = Header(
        codec_id=codec_id,
        bits=bits,
        flags=flags,
        dtype=DTYPES[dtype_code],
        shape=shape,
        rotation=rotation,
        block=block,
        scale_exponent=scale_exponent,
        seed=seed,
        scales_nbytes=scales_nbytes,
        codes_nbytes=codes_nbytes,
        version=version,
    )
    start = HEADER_BYTES + _DIM.size * ndim
    scales = view[start : start + scales_nbytes]
    codes = view[start + scales_nbytes : body_end]
    return header, scales, codes


def declared_numel(payload: bytes | bytearray | memoryview) -> int:
    """The element count a payload's header declares, read from the fixed header alone (no CRC, no
    allocation), so a receiver that knows how many values it expects refuses a forged count before the
    decoder allocates for it. Raises CodecError when the payload is too short or not a LILA payload."""
    view = memoryview(payload).cast("B")
    if len(view) < HEADER_BYTES + CRC_BYTES:
        raise CodecError(
            f"payload truncated: {len(view)} bytes, shorter than the {HEADER_BYTES + CRC_BYTES}-byte minimum"
        )
    fields = _FIXED.unpack_from(view, 0)
    if fields[0] != MAGIC:
        raise CodecError(f"not a LILA codec payload: magic {bytes(fields[0])!r}, expected {MAGIC!r}")
    return int(fields[-3])  # number of elements, see the layout in the module docstring


def peek_header(payload: bytes | bytearray | memoryview) -> Header:
    """The validated header of a payload (the whole payload is checked, CRC included)."""
    return parse_payload(payload)[0]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Bit packing of small unsigned codes (1 to 8 bits each) into bytes, little-endian.

Groups of 8 codes become ``bits`` bytes: the group's integer value is
Σ code_j · 2^(bits·j), written least significant byte first. For 1, 2, 4 and 8 bits
this is the usual "first code in the low bits" nibble/crumb order.
"""

from __future__ import annotations

import torch

MAX_BITS = 8
GROUP = 8  # codes per packing group (a group of 8 codes of b bits is exactly b bytes)
_BYTE = 8
_BYTE_MASK = 0xFF


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits (count must be a multiple of 8)."""
    _check(count, bits)
    return count * bits // _BYTE


def _check(count: int, bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    if count % GROUP:
        raise ValueError(f"the number of codes must be a multiple of {GROUP}, got {count}")


def pack_codes(codes: torch.Tensor, bits: int) -> bytes:
    """Pack a flat uint8 tensor of codes, each < 2**bits, into bytes."""
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(f"pack_codes expects a flat uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    _check(codes.numel(), bits)
    codes = codes.cpu()
    if bits == _BYTE:
        return codes.numpy().tobytes()
    per_byte = _BYTE // bits
    if _BYTE % bits == 0:
        groups = codes.view(-1, per_byte)  # [n / per_byte, per_byte]
        out = groups[:, 0].clone()
        for j in range(1, per_byte):
            out |= groups[:, j] << (bits * j)
        return out.numpy().tobytes()
    groups = codes.view(-1, GROUP).to(torch.int64)  # [n / 8, 8]
    value = groups[:, 0].clone()
    for j in range(1, GROUP):
        value |= groups[:, j] << (bits * j)
    out = torch.empty((groups.shape[0], bits), dtype=torch.uint8)  # [n / 8, bits]
    for k in range(bits):
        out[:, k] = ((value >> (_BYTE * k)) & _BYTE_MASK).to(torch.uint8)
    return out.reshape(-1).numpy().tobytes()


def unpack_codes(data: bytes | memoryview, count: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: a flat uint8 tensor of ``count`` codes."""
    _check(count, bits)
    if len(data) != packed_nbytes(count, bits):
        raise ValueError(
            f"expected {packed_nbytes(count, bits)} bytes for {count} {bits}-bit codes, got {len(data)}"
        )
    raw = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if len(data)
        else torch.empty(0, dtype=torch.uint8)
    )
    if bits == _BYTE:
        return raw
    mask = (1 << bits) - 1
    if _BYTE % bits == 0:
        per_byte = _BYTE // bits
        out = torch.empty((raw.numel(), per_byte), dtype=torch.uint8)  # [bytes, per_byte]
        for j in range(per_byte):
            out[:, j] = (raw >> (bits * j)) & mask
        return out.reshape(-1)
    rows = raw.view(-1, bits).to(torch.int64)  # [n / 8, bits]
    value = rows[:, 0].clone()
    for k in range(1, bits):
        value |= rows[:, k] << (_BYTE * k)
    out = torch.empty((rows.shape[0], GROUP), dtype=torch.uint8)  # [n / 8, 8]
    for j in range(GROUP):
        out[:, j] = ((value >> (bits * j)) & mask).to(torch.uint8)
    return out.reshape(-1)

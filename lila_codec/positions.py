# SPDX-License-Identifier: AGPL-3.0-or-later
"""Position coding of the sparse codecs: which ``k`` coordinates of each chunk of ``chunk`` were kept.

Two codings; the encoder writes both sizes down (they are exact functions of the positions) and keeps the
smaller, recording its choice in the payload (:mod:`lila_codec.sparse`):

* **bitmap** (``BITMAP``): one bit per coordinate of every chunk, little-endian bit order, ``chunk / 8``
  bytes per chunk whatever ``k``. Wins only at high density (above roughly 25 %).
* **Rice** (``RICE``): per chunk the ``k`` positions p_0 < p_1 < … are sent as gaps g_j = p_j − p_{j−1} − 1
  (p_{−1} = −1), each split into a quotient g >> b, sent in unary (that many 1 bits and a 0), and a
  remainder of ``b`` bits. The unary parts and the remainders go to two separate streams (remainders
  first, ``K·b`` bits, then the unary stream), which costs nothing and makes the decoder a pair of
  vectorized passes (the zeros of the unary stream end the quotients). ``b`` is chosen per payload as the
  one that minimizes the total size and recorded. About log2(1/density) + 1.5 bits per kept value: 8.3 at
  1 % density (the entropy of a random k-subset is about 8.1).

This module also places decoded values (:func:`place_values`) and describes a payload's layout
(:func:`payload_layout`).

Strictness: positions come out strictly increasing inside their chunk by construction (a gap is never
negative), so duplicates cannot be expressed; the decoder refuses a stream with too few or too many
terminators, non-zero padding, any position past the end of its chunk, and a bitmap chunk that does not
hold exactly ``k`` ones. Every refusal is a :class:`CodecError`. ``python -m bench.codec`` reports the
bytes of both codings for each sparse scheme; ``tests/unit/codec/test_sparse.py`` checks them.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from lila_codec import wire
from lila_codec.errors import CodecError
from lila_codec.hadamard import unrotate_exact

BITMAP = 0
RICE = 1
METHOD_NAMES = {BITMAP: "bitmap", RICE: "rice"}
MAX_RICE_BITS = 16  # gaps are below the chunk size, at most 2**16
_BYTE = 8
DENOM = 4  # a decoded value is t · s / DENOM with t an integer (offsets are in quarter scales)
# The codes section's sub-header: position coding, Rice bits, values mode, reserved (0), k.
SUB_HEADER = struct.Struct("<BBBBI")
_SUB = SUB_HEADER


def rice_nbytes(gaps: np.ndarray, b: int) -> int:
    """Bytes of the Rice coding of ``gaps`` (int64, count a multiple of 8) with parameter ``b``."""
    unary_bits = int((gaps >> b).sum()) + gaps.size
    return gaps.size * b // _BYTE + -(-unary_bits // _BYTE)


def best_rice_bits(gaps: np.ndarray) -> int:
    """The Rice parameter ``b`` in 0..MAX_RICE_BITS giving the fewest bytes (the smallest such ``b`` on ties)."""
    sizes = [rice_nbytes(gaps, b) for b in range(MAX_RICE_BITS + 1)]
    return int(np.argmin(sizes))


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Gaps ``[nchunks, k]`` (int64) of strictly increasing in-chunk positions ``[nchunks, k]``.

    Raises CodecError on a duplicate, unsorted or negative position (the encoder never produces one)."""
    prev = np.concatenate([np.full((positions.shape[0], 1), -1, dtype=np.int64), positions[:, :-1]], axis=1)
    gaps = positions - prev - 1  # [nchunks, k]
    if gaps.size and int(gaps.min()) < 0:
        raise CodecError("positions must be strictly increasing inside each chunk (duplicate or unsorted)")
    return gaps


def bitmap_nbytes(nchunks: int, chunk: int) -> int:
    return nchunks * chunk // _BYTE


def encode_positions(positions: np.ndarray, chunk: int, method: int | None = None) -> tuple[int, int, bytes]:
    """Code in-chunk positions ``[nchunks, k]`` (int64, sorted): (method, rice bits, bytes).

    ``method`` None picks the smaller coding; BITMAP or RICE forces one (for measurements)."""
    if positions.size and (int(positions.min()) < 0 or int(positions.max()) >= chunk):
        raise CodecError(f"positions must lie in 0..{chunk - 1}")
    gaps = gaps_of(positions).reshape(-1)  # [nchunks · k]
    b = best_rice_bits(gaps)
    if method is None:
        method = BITMAP if bitmap_nbytes(positions.shape[0], chunk) <= rice_nbytes(gaps, b) else RICE
    if method == BITMAP:
        bits = np.zeros((positions.shape[0], chunk), dtype=np.uint8)  # [nchunks, chunk]
        np.put_along_axis(bits, positions, 1, axis=1)
        return BITMAP, 0, np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    if method != RICE:
        raise ValueError(f"unknown position coding {method!r}; use BITMAP or RICE")
    return RICE, b, _rice_pack(gaps, b)


def _rice_pack(gaps: np.ndarray, b: int) -> bytes:
    remainders = (gaps & ((1 << b) - 1)) if b else np.zeros(0, dtype=np.int64)
    shifts = np.arange(b, dtype=np.int64)
    rem_bits = ((remainders[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)  # [K · b], low bit first
    quotients = gaps >> b
    ends = np.cumsum(quotients + 1) - 1  # index of each quotient's terminating 0
    unary = np.ones(int(ends[-1]) + 1 if ends.size else 0, dtype=np.uint8)
    unary[ends] = 0
    return (
        np.packbits(rem_bits, bitorder="little").tobytes() + np.packbits(unary, bitorder="little").tobytes()
    )


def decode_positions(
    data: memoryview, method: int, rice_bits: int, *, nchunks: int, k: int, chunk: int
) -> np.ndarray:
    """In-chunk positions ``[nchunks, k]`` (int64, strictly increasing per row) from their coding.

    Raises CodecError on any malformed stream (see the module docstring). Allocates at most a few bytes
    per bit of ``data`` plus ``[nchunks, k]``, whose size the caller has already checked against the
    payload."""
    count = nchunks * k
    if method == BITMAP:
        if rice_bits:
            raise CodecError(f"bitmap position coding declares a Rice parameter {rice_bits}; it must be 0")
        if len(data) != bitmap_nbytes(nchunks, chunk):
            raise CodecError(
                f"bitmap of {nchunks} chunks of {chunk} needs {bitmap_nbytes(nchunks, chunk)} bytes, got {len(data)}"
            )
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little").reshape(nchunks, chunk)
        ones = bits.sum(axis=1, dtype=np.int64)  # [nchunks]
        if nchunks and not bool((ones == k).all()):
            bad = int(np.argmax(ones != k))
            raise CodecError(f"bitmap chunk {bad} marks {int(ones[bad])} positions, the payload declares {k}")
        return np.nonzero(bits)[1].astype(np.int64).reshape(nchunks, k)  # row-major: sorted per chunk
    if method != RICE:
        raise CodecError(f"unknown position coding {method}; known: {METHOD_NAMES}")
    if rice_bits > MAX_RICE_BITS:
        raise CodecError(f"Rice parameter {rice_bits} above the limit {MAX_RICE_BITS}")
    rem_nbytes = count * rice_bits // _BYTE
    # Each gap is below the chunk, so its quotient is at most (chunk − 1) >> b: a bound on the unary stream.
    max_unary_bits = count * (((chunk - 1) >> rice_bits) + 1)
    unary_nbytes = len(data) - rem_nbytes
    if unary_nbytes < -(-count // _BYTE) or unary_nbytes > -(-max_unary_bits // _BYTE):
        raise CodecError(
            f"Rice position stream of {len(data)} bytes does not fit {count} positions with parameter {rice_bits}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if rice_bits:
        rem_bits = np.unpackbits(raw[:rem_nbytes], bitorder="little").reshape(count, rice_bits)  # [K, b]
        remainders = (rem_bits.astype(np.int64) << np.arange(rice_bits, dtype=np.int64)).sum(axis=1)  # [K]
    else:
        remainders = np.zeros(count, dtype=np.int64)
    unary = np.unpackbits(raw[rem_nbytes:], bitorder="little")
    zeros = np.flatnonzero(unary == 0)
    if zeros.size < count:
        raise CodecError(f"Rice unary stream ends {count - zeros.size} positions early (truncated or forged)")
    last = int(zeros[count - 1]) if count else -1
    if last // _BYTE + 1 != unary_nbytes or bool(unary[last + 1 :].any()):
        raise CodecError("Rice unary stream has trailing data after its last position (padding must be zero)")
    quotients = np.diff(zeros[:count], prepend=-1) - 1  # [K]
    gaps = ((quotients << rice_bits) | remainders).reshape(nchunks, k)  # [nchunks, k]
    if gaps.size and int(gaps.max()) >= chunk:
        raise CodecError(f"a position gap of {int(gaps.max())} leaves its chunk of {chunk}")
    positions = np.cumsum(gaps + 1, axis=1) - 1  # [nchunks, k]: strictly increasing per row
    if positions.size and int(positions[:, -1].max()) >= chunk:
        bad = int(np.argmax(positions[:, -1]))
        raise CodecError(f"chunk {bad} declares position {int(positions[bad, -1])}, past its end ({chunk})")
    return positions


def place_values(
    t: torch.Tensor, s: torch.Tensor, pos: torch.Tensor, *, numel: int, chunk: int, rotation: int, seed: int
) -> torch.Tensor:
    """Flat float32 tensor of ``numel`` values: t ``[n, k]`` · s ``[n]`` / DENOM at in-chunk positions
    ``pos[n, k]``, zeros elsewhere, unrotated exactly when ``rotation`` is set."""
    nchunks = s.numel()
    length = nchunks * chunk
    where = (pos + chunk * torch.arange(nchunks, dtype=torch.int64).unsqueeze(1)).reshape(-1)  # [n · k]
    factor = s / DENOM  # [n], exact
    if rotation:
        dense = torch.zeros(length, dtype=torch.float64)
        # integers, |t| < 2**12: exact through the ±1 transform
        dense[where] = t.reshape(-1).to(torch.float64)
        u = unrotate_exact(dense.view(-1, rotation), seed=seed, size=rotation)  # [length / r, r]
        out = u.view(nchunks, chunk) * (factor * rotation**-0.5).unsqueeze(1)  # [n, chunk]
        return out.reshape(-1).to(torch.float32)[:numel]
    out = torch.zeros(length, dtype=torch.float32)
    out[where] = (t.to(torch.float64) * factor.unsqueeze(1)).reshape(-1).to(torch.float32)
    return out[:numel]


def payload_layout(payload: bytes | bytearray | memoryview) -> dict[str, int | str]:
    """Where a sparse payload's bytes go: k, the position coding and the bytes of scales, values and positions
    (``python -m bench.codec`` reports them). Raises CodecError unless it is a sparse payload."""
    header, scales, codes = wire.parse_payload(payload)
    if header.codec_name not in ("sparse-e8", "sparse-int") or len(codes) < _SUB.size:
        raise CodecError(f"not a sparse codec payload ({header.codec_name})")
    method, rice_bits, _, _, k = _SUB.unpack_from(codes, 0)
    count = -(-header.numel // header.block) * k
    values = count * header.bits // 8
    return {
        "k": k,
        "positions": METHOD_NAMES.get(method, str(method)),
        "rice_bits": rice_bits,
        "scales_nbytes": len(scales),
        "values_nbytes": values,
        "positions_nbytes": len(codes) - _SUB.size - values,
        "total_nbytes": len(memoryview(payload)),
    }

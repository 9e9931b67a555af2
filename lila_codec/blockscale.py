# SPDX-License-Identifier: AGPL-3.0-or-later
"""Per-block fp16 scales, their search grid and the exact reconstruction shared by block codecs.

A block's scale is ``fp16_value · 2**e`` with one exponent ``e`` per payload, chosen so
the largest possible scale sits near 2**15: fp16 then covers 29 binary orders of
magnitude below the largest block at full precision, whatever the data's absolute size.

Reconstruction: block codecs produce, per coordinate, a value ``c`` that is an exact
multiple of 2**-EXACT_SHIFT (lattice point minus dither). The decoder forms the
integer-valued float64 ``t = c · 2**EXACT_SHIFT``, applies the ±1 Hadamard matrix (exact,
see :mod:`lila_codec.hadamard`) and multiplies once by the block's factor. Every step
is exact or a single IEEE rounding, so all peers get the same bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lila_codec.errors import CodecError
from lila_codec.hadamard import unrotate_exact

FP16_TARGET_EXPONENT = 15  # the largest scale maps to at most 2**15 (< 65504, the fp16 maximum)
EXACT_SHIFT = 23  # codes minus dither are multiples of 2**-23 (dither has 24-bit resolution on [0, 2))
MAX_EXPONENT = 100
SCALE_BYTES = 2
_FP16_LE = np.dtype("<f2")


def choose_scale_exponent(max_scale: float) -> int:
    """The payload exponent e for which ``max_scale / 2**e`` is at most 2**15."""
    if max_scale <= 0.0:
        return 0
    _, exp = math.frexp(max_scale)  # max_scale < 2**exp
    return max(-MAX_EXPONENT, min(MAX_EXPONENT, exp - FP16_TARGET_EXPONENT))


def candidate_grid(first: float, last: float, count: int, *, maximum: int) -> tuple[float, ...]:
    """``count`` evenly spaced scale-search values from ``first`` to ``last`` (only ``last`` for one).

    A block codec tries one scale per value and keeps the best; ``last`` is its safe (or
    plain) scale. Raises ValueError unless ``count`` is in 1..``maximum``.
    """
    if not 1 <= count <= maximum:
        raise ValueError(f"scale_candidates must be in 1..{maximum}, got {count}")
    if count == 1:
        return (last,)
    step = (last - first) / (count - 1)
    return tuple(first + step * i for i in range(count))


def fp16_round_up(x: torch.Tensor) -> torch.Tensor:
    """fp16 value ≥ x for non-negative float32 x (the scale never shrinks by rounding)."""
    h = x.to(torch.float16)
    low = h.to(x.dtype) < x
    return (h.view(torch.int16) + low.to(torch.int16)).view(torch.float16)


def scales_to_bytes(s16: torch.Tensor) -> bytes:
    return s16.cpu().numpy().astype(_FP16_LE, copy=False).tobytes()


def scales_from_bytes(data: memoryview, count: int, exponent: int) -> torch.Tensor:
    """float64 block scales from the scales section; rejects negative, NaN or infinite values."""
    if len(data) != SCALE_BYTES * count:
        raise CodecError(f"scales section has {len(data)} bytes, expected {SCALE_BYTES * count}")
    raw = np.frombuffer(data, dtype=_FP16_LE)
    bad = ~np.isfinite(raw) | np.signbit(raw)
    if bad.any():
        first = int(np.argmax(bad))
        raise CodecError(f"block scale {first} is {raw[first]!r}; scales must be finite and non-negative")
    return torch.from_numpy(raw.astype(np.float64)) * 2.0**exponent


def exact_reconstruct(
    c: torch.Tensor, scales: torch.Tensor, *, block: int, rotation: int, seed: int
) -> torch.Tensor:
    """float32 values from per-coordinate lattice values ``c`` (float64, flat, multiples of 2**-23).

    ``scales`` is float64 ``[len(c) / block]``; ``rotation`` 0 means no rotation.
    """
    t = c * 2.0**EXACT_SHIFT  # exact: integers below 2**40
    factor = scales * 2.0**-EXACT_SHIFT  # [nb]
    if rotation:
        t = unrotate_exact(t.view(-1, rotation), seed=seed, size=rotation)  # [L / r, r]
        factor = factor * rotation**-0.5
    out = t.view(-1, block) * factor.unsqueeze(1)  # [nb, block]
    return out.reshape(-1).to(torch.float32)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Seeded randomized Hadamard rotation, applied in chunks of ``size`` coordinates.

Forward: y = H·(d ⊙ x)/√size per chunk, with H the Sylvester Hadamard matrix (entries
±1, H·H = size·I) and d a ±1 vector drawn from the seed. Heavy-tailed data (a few huge
gradient coordinates) comes out close to Gaussian, which is what the lattice codes
are tuned for. The inverse is x = d ⊙ H·y/√size.

The encoder side (:func:`rotate`) is a float32 matrix multiply: fast, and its last-bit
rounding does not matter because the sender decodes its own payload for error
feedback. The decoder side (:func:`unrotate_exact`) must give bitwise identical results
on every peer, so it multiplies *integer-valued* float64 values by the ±1 matrix: every
partial sum is an exactly representable integer (< 2**53), so the result does not
depend on the BLAS library's summation order, FMA use or the device.

Tuning: ``size`` must be a power of two. Larger chunks spread outliers further, but each
chunk must lie inside one scale block (the size must divide the codec's block size) so
that the decoder's exact integer trick applies. A bad setting: size 8 barely mixes
anything; a size that does not divide the block is rejected.
``tests/unit/codec/test_roundtrip.py`` checks the gain of rotation on heavy-tailed data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

MIN_ROTATION = 2
MAX_ROTATION = 1 << 12
# splitmix64 constants (Steele, Lea & Flood 2014); the sign of each coordinate is the
# top bit of splitmix64(seed-mixed index), so the signs do not depend on torch's RNG.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFT1, _SHIFT2, _SHIFT3 = np.uint64(30), np.uint64(27), np.uint64(31)
_TOP_BIT_SHIFT = np.uint64(63)
_SIGN_STREAM = 0x5349474E  # domain separation: "SIGN"


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_rotation_size(size: int, block: int) -> None:
    """Raise ValueError unless ``size`` is a usable rotation size for blocks of ``block``."""
    if not is_power_of_two(size) or not MIN_ROTATION <= size <= MAX_ROTATION:
        raise ValueError(
            f"rotation size must be a power of two in {MIN_ROTATION}..{MAX_ROTATION}, got {size}"
        )
    if block % size:
        raise ValueError(
            f"rotation size {size} must divide the block size {block} (each rotated chunk needs a single "
            "scale); use a smaller rotation or a block size that is a multiple of it"
        )


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer applied elementwise to a uint64 array (wrapping arithmetic)."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> _SHIFT1
        z *= _MIX1
        z ^= z >> _SHIFT2
        z *= _MIX2
        z ^= z >> _SHIFT3
    return z


def stream_keys(seed: int, stream: int, count: int, start: int = 0) -> np.ndarray:
    """``count`` pseudo-random uint64 values for (seed, stream), counter-based and portable."""
    with np.errstate(over="ignore"):
        base = splitmix64(np.array([seed ^ (stream << 32)], dtype=np.uint64))[0]
        counters = np.arange(start, start + count, dtype=np.uint64) * _GOLDEN + base
    return splitmix64(counters)


@lru_cache(maxsize=64)
def _signs_cached(seed: int, size: int) -> torch.Tensor:
    bits = stream_keys(seed, _SIGN_STREAM, size) >> _TOP_BIT_SHIFT
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float64))


def random_signs(seed: int, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ±1 vector d of length ``size`` for ``seed`` (cached)."""
    return _signs_cached(seed, size).to(dtype)


@lru_cache(maxsize=16)
def _hadamard_cached(size: int) -> torch.Tensor:
    h = torch.ones((1, 1), dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)  # [2k, 2k] Sylvester doubling
    return h


def hadamard_matrix(size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Sylvester Hadamard matrix of order ``size`` (entries ±1, symmetric)."""
    if not is_power_of_two(size) or size > MAX_ROTATION:
        raise ValueError(f"Hadamard size must be a power of two up to {MAX_ROTATION}, got {size}")
    return _hadamard_cached(size).to(dtype)


def rotate(x: torch.Tensor, *, seed: int, size: int) -> torch.Tensor:
    """Forward rotation of a flat float32 tensor whose length is a multiple of ``size``."""
    if x.dim() != 1 or x.numel() % size:
        raise ValueError(
            f"rotate expects a flat tensor with a length multiple of {size}, got {tuple(x.shape)}"
        )
    d = random_signs(seed, size, x.dtype).to(x.device)
    h = hadamard_matrix(size, x.dtype).to(x.device)
    chunks = x.view(-1, size) * d  # [n / size, size]
    return (chunks @ h).mul_(size**-0.5).reshape(-1)


def unrotate_exact(t: torch.Tensor, *, seed: int, size: int) -> torch.Tensor:
    """H·t per chunk for integer-valued float64 ``t[n_chunks, size]``, with the signs d applied.

    Returns d ⊙ (H·t) (no 1/√size factor; the caller folds it into its scale). Exact and
    therefore bitwise reproducible as long as |t| · size < 2**53.
    """
    if t.dtype != torch.float64 or t.dim() != 2 or t.shape[1] != size:
        raise ValueError(f"unrotate_exact expects float64 [chunks, {size}], got {t.dtype} {tuple(t.shape)}")
    d = random_signs(seed, size, torch.float64).to(t.device)
    h = hadamard_matrix(size, torch.float64).to(t.device)
    return (t @ h).mul_(d)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Leech lattice Λ24 scaled by √8, its minimal vectors, and an exact fast nearest-point decoder.

In this scaling every lattice point is an integer vector x = t·1 + 2c + 4w with t ∈ {0, 1}, c a Golay
codeword (MOG coordinates, see :mod:`lila_model.lattice.golay`) and w an integer vector with
Σw ≡ t (mod 2). Equivalently: x is all even, x/2 mod 2 is a Golay codeword and Σx ≡ 0 (mod 8); or
x − (−3, 1²³) is such a vector. Minimum norm² is 32, covolume 8¹²; multiply by :data:`LEECH_SCALE`
to get the unimodular Λ24 (minimum norm² 4).

:func:`nearest_leech` is an exact maximum-likelihood decoder: each coordinate only matters through
x_i mod 8 = t + 2c_i + 4s_i (s_i = w_i mod 2), so decoding is a min-sum problem over (t, c, s) with
Σs ≡ t, solved on the MOG/hexacode trellis:

1. residue costs D_i[k], the squared distance from y_i to k + 8ℤ for k = t + 2b + 4s;
2. per column, the cost of each 4-bit pattern with each parity of its s bits (ℤ₂ min-plus tree);
3. regroup by (t, parity p, column, hexacode symbol a) into 4 Klein states g = 2·(top bit) + s;
4. the global constraint is g₁ ⊕ … ⊕ g₆ = (p, t): Klein min-plus convolutions over column pairs,
   then over the 64 hexacode words, give 2·2·64 = 256 candidate costs; take the argmin;
5. trace the winner's column states back to its Golay codeword c, then decode exactly inside the
   coset t + 2c + 4·{w : Σw ≡ t} like D_n (round, and fix the parity at the worst coordinate).

Everything is branch-free tensor code with the batch as the last dimension, processed in chunks.
:func:`nearest_leech_reference` is a slower, independent exact decoder used to cross-check it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from lila_model.lattice.golay import (
    GF4_SIZE,
    GOLAY_LENGTH,
    GOLAY_SIZE,
    HEXACODE_SIZE,
    MOG_COLUMNS,
    MOG_ROWS,
    golay_codewords,
    golay_generator_matrix,
    hexacode_words,
    is_golay_codeword,
    mog_column_patterns,
)

logger = logging.getLogger(__name__)

LEECH_DIM = GOLAY_LENGTH
LEECH_SCALE = 8**-0.5
LEECH_MIN_NORM2 = 32
LEECH_KISSING_NUMBER = 196_560
LEECH_COVOLUME = 8**12

_PERIOD = 8  # 8ℤ²⁴ ⊂ √8·Λ24, so residues mod 8 decide everything
_COSET_STEP = 4  # inside a (t, c) coset coordinates move in steps of 4
_GOLAY_STEP = 2
_KLEIN = 4  # Klein four-group ℤ₂×ℤ₂: states g = 2·u + s
_PAIRS = MOG_COLUMNS // 2
_NUM_CANDIDATES = 2 * 2 * HEXACODE_SIZE  # (t, parity, hexacode word)
_NUM_COSETS = 2 * GOLAY_SIZE  # (t, Golay codeword)
_ODD_VECTOR_FIRST = -3  # the odd coset representative (−3, 1²³)

# Chunk sizes (vectors per chunk). The trellis intermediates take ~28 KB per vector in float32.
# On CPU the fastest chunk is the largest whose intermediates still fit in cache: bigger ones fall
# out of it, much smaller ones pay per-op overhead (`python -m bench.leech` times several chunk
# sizes). On CUDA a chunk needs ~100 kernel launches, so bigger chunks amortize them;
# 16,384 vectors is ~0.5 GB of transient memory.
DEFAULT_CPU_CHUNK = 1024
DEFAULT_CUDA_CHUNK = 1 << 14
DEFAULT_REFERENCE_CANDIDATES = 16
_REFERENCE_CHUNK = 256  # rows per reference step: (256, 8192) float64 bounds, ~17 MB
_BRUTE_ROWS = 8  # rows per all-coset step: (8, 8192, 2, 24) float64, ~25 MB

# Inputs beyond these magnitudes lose integer precision in the residue arithmetic.
_MAX_ABS = {torch.float32: 2.0**20, torch.float64: 2.0**48}
_MAX_EXACT_INT = 2.0**53  # floats above this cannot be tested for integrality (or converted safely)


# ---------------------------------------------------------------------------------------------
# Lattice structure: minimal vectors, membership, basis
# ---------------------------------------------------------------------------------------------


def _even_sign_patterns(length: int) -> Tensor:
    """All ±1 vectors (int64, shape (2^(length-1), length)) with an even number of minus signs."""
    masks = torch.arange(2**length, dtype=torch.int64)
    bits = (masks.unsqueeze(-1) >> torch.arange(length, dtype=torch.int64)) & 1  # (2^length, length)
    bits = bits[bits.sum(dim=-1) % 2 == 0]
    return 1 - 2 * bits


@lru_cache(maxsize=1)
def _min_vectors() -> Tensor:
    codewords = golay_codewords().to(torch.int64)  # (4096, 24)
    octads = codewords[codewords.sum(dim=-1) == 8]  # (759, 8-sets)
    positions = octads.nonzero()[:, 1].view(-1, 8)  # (759, 8)
    signs = _even_sign_patterns(8)  # (128, 8)
    shape2 = torch.zeros(octads.shape[0], signs.shape[0], LEECH_DIM, dtype=torch.int64)
    shape2.scatter_(
        2,
        positions.unsqueeze(1).expand(-1, signs.shape[0], -1),
        (_GOLAY_STEP * signs).unsqueeze(0).expand(octads.shape[0], -1, -1),
    )
    # (±4, ±4, 0²²): every pair of coordinates, every sign.
    i, j = torch.triu_indices(LEECH_DIM, LEECH_DIM, offset=1)  # 276 pairs
    pair_signs = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.int64)
    shape4 = torch.zeros(i.numel(), pair_signs.shape[0], LEECH_DIM, dtype=torch.int64)
    shape4[torch.arange(i.numel()), :, i] = _COSET_STEP * pair_signs[:, 0]
    shape4[torch.arange(i.numel()), :, j] = _COSET_STEP * pair_signs[:, 1]
    # (∓3, ±1²³): sign (−1)^c_i on a Golay codeword c, times (1²³) with −3 at one position.
    word_signs = 1 - 2 * codewords  # (4096, 24)
    odd_base = torch.ones(LEECH_DIM, LEECH_DIM, dtype=torch.int64) + (_ODD_VECTOR_FIRST - 1) * torch.eye(
        LEECH_DIM, dtype=torch.int64
    )  # (24 positions, 24)
    shape3 = word_signs.unsqueeze(1) * odd_base.unsqueeze(0)  # (4096, 24, 24)
    return torch.cat(
        (shape2.view(-1, LEECH_DIM), shape4.view(-1, LEECH_DIM), shape3.view(-1, LEECH_DIM)), dim=0
    )


def leech_min_vectors() -> Tensor:
    """All 196,560 minimal vectors of √8·Λ24 (int64, shape (196560, 24), norm² 32).

    Order: 97,152 of shape (±2⁸, 0¹⁶) on octads with an even number of minus signs, 1,104 of
    shape (±4², 0²²), 98,304 of shape (∓3, ±1²³). About 38 MB; built once and cached.
    """
    return _min_vectors().clone()


def is_leech_point(x: Tensor) -> Tensor:
    """Boolean tensor of shape (...): whether each vector of shape (..., 24) lies in √8·Λ24.

    Accepts integer or floating tensors; non-integral, non-finite or huge (|x| > 2⁵³) float
    coordinates give False.
    """
    if x.shape[-1:] != (LEECH_DIM,):
        raise ValueError(
            f"Leech vectors have {LEECH_DIM} coordinates in the last dim; got shape {tuple(x.shape)}"
        )
    if x.is_floating_point():
        representable = torch.isfinite(x) & (x.abs() <= _MAX_EXACT_INT)
        integral = (representable & (x == torch.round(x))).all(dim=-1)
        xi = torch.where(representable, torch.round(x), torch.zeros_like(x)).to(torch.int64)
    else:
        integral = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        xi = x.to(torch.int64)
    t = torch.remainder(xi[..., :1], 2)  # (..., 1)
    same_parity = (torch.remainder(xi, 2) == t).all(dim=-1)
    even = xi - t  # all even where same_parity holds
    c = torch.remainder(torch.div(even, 2, rounding_mode="floor"), 2)  # Golay bits
    w = torch.div(even - _GOLAY_STEP * c, _COSET_STEP, rounding_mode="floor")
    sum_ok = torch.remainder(w.sum(dim=-1), 2) == t.squeeze(-1)
    return integral & same_parity & sum_ok & is_golay_codeword(c)


def _hermite_normal_form(rows: list[list[int]]) -> list[list[int]]:
    """Row-style Hermite normal form (upper triangular, positive pivots) of an integer generating set."""
    rows = [list(r) for r in rows]
    basis: list[list[int]] = []
    width = len(rows[0])
    for col in range(width):
        active = [r for r in rows if r[col] != 0]
        rest = [r for r in rows if r[col] == 0]
        while len(active) > 1:
            active.sort(key=lambda r: abs(r[col]))
            pivot = active[0]
            reduced = []
            for r in active[1:]:
                q = r[col] // pivot[col]
                r = [a - q * b for a, b in zip(r, pivot, strict=True)]
                if r[col] != 0:
                    reduced.append(r)
                elif any(r):
                    rest.append(r)
            active = [pivot, *reduced]
        if active:
            pivot = active[0] if active[0][col] > 0 else [-a for a in active[0]]
            basis.append(pivot)
        rows = rest
    for i, row in enumerate(basis):  # canonical: entries above each pivot reduced into [0, pivot)
        col = next(k for k, a in enumerate(row) if a != 0)
        for above in basis[:i]:
            q = above[col] // row[col]
            above[:] = [a - q * b for a, b in zip(above, row, strict=True)]
    return basis


@lru_cache(maxsize=1)
def _generator() -> tuple[tuple[int, ...], ...]:
    gens: list[list[int]] = [[_GOLAY_STEP * int(b) for b in row] for row in golay_generator_matrix().tolist()]
    for i in range(1, LEECH_DIM):  # 4·D24 is generated by 4(e_0 ± e_i)
        for sign in (1, -1):
            v = [0] * LEECH_DIM
            v[0], v[i] = _COSET_STEP, sign * _COSET_STEP
            gens.append(v)
    gens.append([_ODD_VECTOR_FIRST] + [1] * (LEECH_DIM - 1))
    basis = _hermite_normal_form(gens)
    if len(basis) != LEECH_DIM:
        raise AssertionError(f"Leech generating set has rank {len(basis)}, expected {LEECH_DIM}")
    return tuple(tuple(r) for r in basis)


def leech_generator_matrix() -> Tensor:
    """A basis of √8·Λ24 as the rows of an upper-triangular int64 (24, 24) matrix (Hermite normal form)."""
    return torch.tensor(_generator(), dtype=torch.int64)


def leech_gram_matrix() -> Tensor:
    """Gram matrix (int64, (24, 24)) of the basis scaled to unit covolume: B·Bᵀ/8.

    It is integral with even diagonal and determinant 1 (Λ24 is even unimodular).
    """
    basis = leech_generator_matrix()
    gram = basis @ basis.T
    if bool((gram % _PERIOD != 0).any()):
        raise AssertionError("Leech basis inner products are not multiples of 8")
    return gram // _PERIOD


# ---------------------------------------------------------------------------------------------
# Input handling and the exact decode inside one (t, c) coset
# ---------------------------------------------------------------------------------------------


def _validate(x: Tensor, name: str) -> torch.dtype:
    if x.shape[-1:] != (LEECH_DIM,):
        raise ValueError(
            f"{name} expects vectors with {LEECH_DIM} coordinates in the last dim; got shape {tuple(x.shape)}. "
            f"Reshape the input to (..., {LEECH_DIM}) (pad to a multiple of {LEECH_DIM} first)."
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating tensor; got {x.dtype}. Convert with x.float().")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.numel():
        biggest = float(x.detach().abs().amax())
        limit = _MAX_ABS[work]
        if not biggest <= limit:
            raise ValueError(
                f"{name}: input has a coordinate of magnitude {biggest} (NaN/inf or above {limit:g}); "
                "integer residues would lose precision. Scale the input down or use float64."
            )
    return work


def _decode_in_coset(y: Tensor, t: Tensor, c: Tensor, dim: int) -> Tensor:
    """Nearest point of t·1 + 2c + 4·{w : Σw ≡ t (mod 2)} to y; coordinates along ``dim``.

    ``t`` has y's shape with ``dim`` of size 1, ``c`` has y's shape (0/1 values in y's dtype).
    """
    base = t + _GOLAY_STEP * c
    w = torch.round((y - base) * (1.0 / _COSET_STEP))
    x = base + _COSET_STEP * w
    err = y - x
    wrong = (torch.remainder(torch.remainder(w, 2).sum(dim=dim, keepdim=True) - t, 2) != 0).to(y.dtype)
    worst = err.abs().argmax(dim=dim, keepdim=True)
    toward = torch.where(err.gather(dim, worst) >= 0, _COSET_STEP, -_COSET_STEP).to(y.dtype)
    return x.scatter_add(dim, worst, toward * wrong)


# ---------------------------------------------------------------------------------------------
# The fast trellis decoder
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tables:
    residues: Tensor  # (2t, 1, 1, 2b, 2s, 1) values t + 2b + 4s
    regroup: Tensor  # (4 g · 2t · 2p · 6 col · 4 a) rows of the column-cost table
    words: Tensor  # (3 pair · 4 g · 2t · 2p · 64 h) rows of the pair table
    hexacode: Tensor  # (64, 6) symbols
    patterns: Tensor  # (2p · 4a · 2u) flattened pattern table
    xor: Tensor  # (4 · 4) g ^ g'
    row_shift: Tensor  # (1, 4, 1) shifts 3 − row for reading pattern bits


def _col_row(t: int, col: int, pattern: int, s: int) -> int:
    """Row of the flattened column-cost table of shape (2t, 6 col, 16 pattern, 2 s)."""
    return ((t * MOG_COLUMNS + col) * 2**MOG_ROWS + pattern) * 2 + s


def _pair_row(g: int, t: int, p: int, pair: int, a: int, b: int) -> int:
    """Row of the flattened pair table of shape (4 g, 2t, 2p, 3 pair, 4 a, 4 a')."""
    return ((((g * 2 + t) * 2 + p) * _PAIRS + pair) * GF4_SIZE + a) * GF4_SIZE + b


@lru_cache(maxsize=16)
def _tables(device: torch.device, dtype: torch.dtype) -> _Tables:
    pat = mog_column_patterns().tolist()  # [p][a][u]
    hexa = hexacode_words().tolist()

    def col_state(t: int, col: int, p: int, a: int, g: int) -> int:
        return _col_row(t, col, pat[p][a][g >> 1], g & 1)

    regroup = [
        col_state(t, col, p, a, g)
        for g in range(_KLEIN)
        for t in range(2)
        for p in range(2)
        for col in range(MOG_COLUMNS)
        for a in range(GF4_SIZE)
    ]
    # Pairs (0,1) and (2,3) of word h at state g; pair (4,5) at g ^ g* so that a plain sum over g
    # enforces g₀₁ ⊕ g₂₃ ⊕ g₄₅ = g* = (top-row parity p, Σs parity t).
    words = [
        _pair_row(g ^ (2 * p + t if pair == 2 else 0), t, p, pair, h[2 * pair], h[2 * pair + 1])
        for pair in range(_PAIRS)
        for g in range(_KLEIN)
        for t in range(2)
        for p in range(2)
        for h in hexa
    ]
    residues = torch.tensor(
        [[[t + _GOLAY_STEP * b + _COSET_STEP * s for s in range(2)] for b in range(2)] for t in range(2)],
        dtype=dtype,
        device=device,
    ).view(2, 1, 1, 2, 2, 1)

    def index(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    return _Tables(
        residues=residues,
        regroup=index(regroup),
        words=index(words),
        hexacode=torch.tensor(hexa, dtype=torch.int64, device=device),
        patterns=mog_column_patterns().view(-1).to(device),
        xor=index([g ^ h for g in range(_KLEIN) for h in range(_KLEIN)]),
        row_shift=index([MOG_ROWS - 1 - r for r in range(MOG_ROWS)]).view(1, MOG_ROWS, 1),
    )


def _z2_minplus(a: Tensor, b: Tensor) -> Tensor:
    """ℤ₂ min-plus convolution: a (..., m, 2, n), b (..., k, 2, n) -> (..., m, k, 2, n)."""
    a0, a1 = a[..., :, None, 0, :], a[..., :, None, 1, :]  # (..., m, 1, n)
    b0, b1 = b[..., None, :, 0, :], b[..., None, :, 1, :]  # (..., 1, k, n)
    even = torch.minimum(a0 + b0, a1 + b1)
    odd = torch.minimum(a0 + b1, a1 + b0)
    return torch.stack((even, odd), dim=-2)


def _klein_minplus(a: Tensor, b: Tensor, *, out: Tensor) -> None:
    """Min-plus convolution over the Klein group along dim 0: out[g] = min_g1 a[g1] + b[g ^ g1]."""
    scratch = torch.empty_like(out[0])
    for g in range(_KLEIN):
        target = out[g]
        torch.add(a[0], b[g], out=target)
        for g1 in range(1, _KLEIN):
            torch.add(a[g1], b[g ^ g1], out=scratch)
            torch.minimum(target, scratch, out=target)


def _decode_chunk(y: Tensor, tab: _Tables) -> tuple[Tensor, Tensor]:
    """Decode y of shape (24, n); returns (points (24, n), squared distances (n,))."""
    n = y.shape[1]
    # 1. residue costs D[t, col, row, b, s] = dist²(y, t + 2b + 4s + 8ℤ)
    diff = y.view(1, MOG_COLUMNS, MOG_ROWS, 1, 1, n) - tab.residues  # (2, 6, 4, 2, 2, n)
    cost = torch.sub(diff, torch.round(diff * (1.0 / _PERIOD)), alpha=_PERIOD).square_()
    # 2. per column: cost of each 4-bit pattern with each parity of its s bits
    top = _z2_minplus(cost[:, :, 0], cost[:, :, 1]).view(2, MOG_COLUMNS, 4, 2, n)  # rows 0,1
    bottom = _z2_minplus(cost[:, :, 2], cost[:, :, 3]).view(2, MOG_COLUMNS, 4, 2, n)  # rows 2,3
    columns = _z2_minplus(top, bottom).view(-1, n)  # (2t · 6 col · 16 pattern · 2 s, n)
    # 3. regroup into Klein states: G[g, t, p, pair, k, a] for column 2·pair + k
    states = columns.index_select(0, tab.regroup).view(_KLEIN, 2, 2, _PAIRS, 2, GF4_SIZE, n)
    first = states[:, :, :, :, 0].unsqueeze(-2)  # (4, 2, 2, 3, 4 a, 1, n)
    second = states[:, :, :, :, 1].unsqueeze(-3)  # (4, 2, 2, 3, 1, 4 a', n)
    # 4a. Klein min-plus convolution of column pairs: P[g] = min_g1 first[g1] + second[g ^ g1]
    pairs = torch.empty(_KLEIN, 2, 2, _PAIRS, GF4_SIZE, GF4_SIZE, n, dtype=y.dtype, device=y.device)
    _klein_minplus(first, second, out=pairs)
    # 4b. per hexacode word: pairs (0,1) ⊛ (2,3), summed with (4,5) at g ^ g*, minimized over g
    words = pairs.view(-1, n).index_select(0, tab.words).view(_PAIRS, _KLEIN, _NUM_CANDIDATES, n)
    partial = torch.empty(_KLEIN, _NUM_CANDIDATES, n, dtype=y.dtype, device=y.device)
    _klein_minplus(words[0], words[1], out=partial)
    totals = (partial + words[2]).amin(dim=0)  # (256 candidates (t, p, h), n)
    best_cost, best = totals.min(dim=0)  # (n,)
    # 5. trace the winner's column states back (forward Klein DP with back-pointers)
    t, p, h = best // (2 * HEXACODE_SIZE), (best // HEXACODE_SIZE) % 2, best % HEXACODE_SIZE
    symbols = tab.hexacode[h].T  # (6, n)
    klein = torch.arange(_KLEIN, device=y.device).view(1, _KLEIN, 1)
    cols = torch.arange(MOG_COLUMNS, device=y.device).view(MOG_COLUMNS, 1, 1)
    pattern_of_state = tab.patterns[(p * GF4_SIZE + symbols).unsqueeze(1) * 2 + (klein >> 1)]  # (6, 4, n)
    rows = ((t * MOG_COLUMNS + cols) * 2**MOG_ROWS + pattern_of_state) * 2 + (klein & 1)
    state_cost = columns.gather(0, rows.reshape(-1, n)).view(MOG_COLUMNS, _KLEIN, n)
    acc = state_cost[0]  # (4 cumulative g, n)
    back = []
    for col in range(1, MOG_COLUMNS):
        step = acc.unsqueeze(0) + state_cost[col].index_select(0, tab.xor).view(_KLEIN, _KLEIN, n)
        acc, arg = step.min(dim=1)  # step[g, g'] = acc[g'] + cost[g ^ g']
        back.append(arg)
    cumulative = (2 * p + t).unsqueeze(0)  # (1, n)
    chosen = [cumulative] * MOG_COLUMNS
    for col in range(MOG_COLUMNS - 1, 0, -1):
        previous = back[col - 1].gather(0, cumulative)
        chosen[col] = cumulative ^ previous
        cumulative = previous
    chosen[0] = cumulative
    tops = torch.cat(chosen, dim=0) >> 1  # (6, n)
    pattern = tab.patterns[(p * GF4_SIZE + symbols) * 2 + tops]  # (6, n)
    bits = (pattern.unsqueeze(1) >> tab.row_shift) & 1  # (6, 4, n)
    c = bits.reshape(LEECH_DIM, n).to(y.dtype)
    points = _decode_in_coset(y, t.to(y.dtype).unsqueeze(0), c, dim=0)
    return points, best_cost


def nearest_leech_with_distance(x: Tensor, *, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact nearest point of √8·Λ24 and its squared distance as computed by the trellis.

    Args:
        x: tensor of shape (..., 24), float16/bfloat16/float32/float64, CPU or CUDA.
        chunk_size: vectors decoded per chunk; the working memory is ~28 KB per vector (float32).
            Default 1,024 on CPU (chunks whose intermediates fit in cache are fastest: much larger
            ones fall out of it, much smaller ones pay per-op overhead; ``python -m bench.leech``
            times several sizes) and 16,384 on CUDA (~0.5 GB; raise it if kernel launches dominate
            and memory allows, lower it if memory is tight).

    Returns:
        (points, distances): integer-valued points of x's dtype and shape, and squared distances of
        shape x.shape[:-1] in the working dtype (float32, or float64 for float64 input).
    """
    work = _validate(x, "nearest_leech")
    if chunk_size is None:
        chunk_size = DEFAULT_CUDA_CHUNK if x.is_cuda else DEFAULT_CPU_CHUNK
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of vectors; got {chunk_size}")
    flat = x.detach().reshape(-1, LEECH_DIM).to(work)  # (N, 24)
    tab = _tables(flat.device, work)
    points = torch.empty_like(flat)
    dist = torch.empty(flat.shape[0], dtype=work, device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start : start + chunk_size].T.contiguous()  # (24, n)
        p, d = _decode_chunk(chunk, tab)
        points[start : start + chunk_size] = p.T
        dist[start : start + chunk_size] = d
    return points.to(x.dtype).view(x.shape), dist.view(x.shape[:-1])


def nearest_leech(x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Exact nearest point of √8·Λ24 to each 24-vector of x (shape (..., 24)); integer-valued, x's dtype.

    Ties may go either way. No gradient flows (use a straight-through estimator around it).
    Checks the input's magnitude first (NaN/inf or |x| > 2²⁰ in float32 raise), which on CUDA costs
    one device synchronization per call. float16/bfloat16 are decoded in float32 and cast back, so
    outputs beyond 2,048 (float16) or 256 (bfloat16) are rounded by the output dtype.
    See :func:`nearest_leech_with_distance` for ``chunk_size``.
    """
    return nearest_leech_with_distance(x, chunk_size=chunk_size)[0]


# ---------------------------------------------------------------------------------------------
# The reference decoder (independent, slower; for tests)
# ---------------------------------------------------------------------------------------------


def _coset_terms(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per coordinate, t and Golay bit b: best cost, parity of the best w, extra cost to flip it.

    y: (n, 24) float64. Returns three tensors of shape (n, 2t, 2b, 24).
    """
    base = torch.tensor([[0.0, 2.0], [1.0, 3.0]], dtype=y.dtype, device=y.device).view(1, 2, 2, 1)
    rel = y.view(-1, 1, 1, LEECH_DIM) - base  # (n, 2, 2, 24)
    w = torch.round(rel / _COSET_STEP)
    err = rel - _COSET_STEP * w
    near = err.square()
    far = (err.abs() - _COSET_STEP).square()  # the other side: w ± 1 toward y
    return near, torch.remainder(w, 2), far - near


def _reference_winners(y: Tensor, words: Tensor, candidates: int) -> Tensor:
    """Best coset index t·4096 + codeword index for each row of y (n, 24), float64."""
    near, parity, flip = _coset_terms(y)  # (n, 2t, 2b, 24) each
    # lower bound and residue parity for every (t, c): Σ_i term[t, c_i, i]
    bound = near[:, :, 0].sum(-1, keepdim=True) + (near[:, :, 1] - near[:, :, 0]) @ words.T  # (n, 2, 4096)
    par = parity[:, :, 0].sum(-1, keepdim=True) + (parity[:, :, 1] - parity[:, :, 0]) @ words.T
    t_col = torch.arange(2, dtype=torch.float64, device=y.device).view(1, 2, 1)
    wrong = torch.remainder(torch.round(par) - t_col, 2) != 0  # (n, 2, 4096)
    bound, wrong = bound.reshape(-1, _NUM_COSETS), wrong.reshape(-1, _NUM_COSETS)  # (n, 8192)

    def exact(rows: Tensor, cosets: Tensor) -> Tensor:
        t = cosets // words.shape[0]  # (m, k)
        c = words[cosets % words.shape[0]].bool()  # (m, k, 24)
        f = flip[rows.unsqueeze(1), t]  # (m, k, 2b, 24)
        f = torch.where(c, f[:, :, 1], f[:, :, 0])  # (m, k, 24)
        extra = f.amin(dim=-1) * wrong[rows.unsqueeze(1), cosets]
        return bound[rows.unsqueeze(1), cosets] + extra

    all_rows = torch.arange(y.shape[0], device=y.device)
    if candidates < _NUM_COSETS:
        low, cand = bound.topk(candidates + 1, dim=1, largest=False)
        best_cost, arg = exact(all_rows, cand[:, :candidates]).min(dim=1)
        winner = cand.gather(1, arg.unsqueeze(1)).squeeze(1)
        redo = all_rows[best_cost > low[:, candidates]]  # an unscored coset might still be better
        if redo.numel():
            logger.debug("reference decoder: %d of %d points need all cosets", redo.numel(), y.shape[0])
    else:
        winner = torch.empty(y.shape[0], dtype=torch.int64, device=y.device)
        redo = all_rows
    every = torch.arange(_NUM_COSETS, device=y.device).unsqueeze(0)
    for start in range(0, redo.numel(), _BRUTE_ROWS):
        rows = redo[start : start + _BRUTE_ROWS]
        winner[rows] = exact(rows, every.expand(rows.numel(), -1)).argmin(dim=1)
    return winner


def nearest_leech_reference(x: Tensor, *, candidates: int = DEFAULT_REFERENCE_CANDIDATES) -> Tensor:
    """Exact nearest point of √8·Λ24 by scoring all 8,192 cosets (t, c); for cross-checks only.

    Each coset cost is a linear lower bound (best coordinate residues, two matrix multiplies over all
    4,096 codewords) plus a parity fix. The ``candidates`` cosets with the smallest bound are decoded
    exactly; if the best of them is not below every other bound the point is redone over all cosets,
    so the answer is exact for any ``candidates`` (small values are faster; ≥ 8192 is brute force and
    much slower). Computes in float64, independently of the trellis, and is far slower than
    :func:`nearest_leech` (``python -m bench.leech`` times both).
    """
    _validate(x, "nearest_leech_reference")
    if candidates < 1:
        raise ValueError(f"candidates must be a positive number of cosets; got {candidates}")
    y = x.detach().reshape(-1, LEECH_DIM).to(torch.float64)
    words = golay_codewords().to(device=y.device, dtype=torch.float64)  # (4096, 24)
    out = torch.empty_like(y)
    for start in range(0, y.shape[0], _REFERENCE_CHUNK):
        chunk = y[start : start + _REFERENCE_CHUNK]
        winner = _reference_winners(chunk, words, min(candidates, _NUM_COSETS))
        t = (winner // words.shape[0]).to(torch.float64).unsqueeze(1)  # (n, 1)
        c = words[winner % words.shape[0]]  # (n, 24)
        out[start : start + _REFERENCE_CHUNK] = _decode_in_coset(chunk, t, c, dim=1)
    return out.to(x.dtype).view(x.shape)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The extended binary Golay code in MOG coordinates, and the hexacode over GF(4).

Conventions (Conway & Sloane, SPLAG ch. 11):

* GF(4) = {0, 1, ω, ω̄} is encoded as the integers 0, 1, 2, 3. Addition is XOR; multiplication
  follows ω·ω = ω̄, ω·ω̄ = 1, ω̄·ω̄ = ω (see :func:`gf4_mul`).
* The hexacode is the 3-dimensional GF(4) code of length 6 whose words are
  (a, b, c, φ(1), φ(ω), φ(ω̄)) with φ(x) = a·x² + b·x + c: 64 words, weights 1×0, 45×4, 18×6.
* MOG (Miracle Octad Generator) layout: a 24-bit word is a 4×6 array of 4 rows and 6 columns,
  coordinate index = 4·column + row. Rows are labelled 0, 1, ω, ω̄; a column's *score* is the
  GF(4) sum of the labels of its 1-bits. A 4×6 array is a Golay codeword iff every column has
  the same parity p, the top row has parity p too, and the six scores form a hexacode word.
* A column *pattern* is a 4-bit integer whose bit (3 − row) is the bit of that row, so row 0 is
  the most significant bit: pattern 0b1000 has only the top-row bit set.

Every table is built on first use and cached (nothing is computed at import time). Public
functions return fresh tensors, so callers may modify what they get.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import product

import torch
from torch import Tensor

GF4_SIZE = 4
OMEGA = 2
OMEGA_BAR = 3
HEXACODE_LENGTH = 6
HEXACODE_SIZE = GF4_SIZE**3
MOG_ROWS = 4
MOG_COLUMNS = 6
COLUMN_PATTERNS = 2**MOG_ROWS
GOLAY_LENGTH = MOG_ROWS * MOG_COLUMNS
GOLAY_DIMENSION = 12
GOLAY_SIZE = 2**GOLAY_DIMENSION
GOLAY_MIN_DISTANCE = 8

# Discrete logarithm base ω of the nonzero GF(4) elements 1, ω, ω̄ (ω³ = 1).
_GF4_LOG = {1: 0, OMEGA: 1, OMEGA_BAR: 2}
_GF4_EXP = (1, OMEGA, OMEGA_BAR)
_GF4_MULTIPLICATIVE_ORDER = 3


def gf4_mul(a: int, b: int) -> int:
    """Product of two GF(4) elements encoded 0..3 (0, 1, ω, ω̄)."""
    if not (0 <= a < GF4_SIZE and 0 <= b < GF4_SIZE):
        raise ValueError(f"GF(4) elements are encoded 0..3 (0, 1, ω, ω̄); got {a} and {b}")
    if a == 0 or b == 0:
        return 0
    return _GF4_EXP[(_GF4_LOG[a] + _GF4_LOG[b]) % _GF4_MULTIPLICATIVE_ORDER]


@lru_cache(maxsize=1)
def _hexacode() -> tuple[tuple[int, ...], ...]:
    words = []
    for a, b, c in product(range(GF4_SIZE), repeat=3):
        # φ(x) = a·x² + b·x + c evaluated at x = 1, ω, ω̄.
        evals = tuple(gf4_mul(a, gf4_mul(x, x)) ^ gf4_mul(b, x) ^ c for x in (1, OMEGA, OMEGA_BAR))
        words.append((a, b, c, *evals))
    return tuple(words)


def hexacode_words() -> Tensor:
    """All 64 hexacode words as an int64 tensor of shape (64, 6), symbols encoded 0..3.

    Word k is (a, b, c, φ(1), φ(ω), φ(ω̄)) with k = 16·a + 4·b + c; word 0 is the zero word.
    """
    return torch.tensor(_hexacode(), dtype=torch.int64)


def column_bits(pattern: int) -> tuple[int, ...]:
    """The four row bits (row 0 first) of a 4-bit MOG column pattern."""
    if not 0 <= pattern < COLUMN_PATTERNS:
        raise ValueError(f"a MOG column pattern is a 4-bit integer 0..15; got {pattern}")
    return tuple((pattern >> (MOG_ROWS - 1 - row)) & 1 for row in range(MOG_ROWS))


def column_score(pattern: int) -> int:
    """GF(4) sum of the row labels (0, 1, ω, ω̄) of the 1-bits of a column pattern."""
    score = 0
    for row, bit in enumerate(column_bits(pattern)):
        if bit:
            score ^= row  # row r carries the label encoded as r
    return score


@lru_cache(maxsize=1)
def _column_patterns() -> tuple[tuple[tuple[int, int], ...], ...]:
    table = [[[-1, -1] for _ in range(GF4_SIZE)] for _ in range(2)]
    for pattern in range(COLUMN_PATTERNS):
        bits = column_bits(pattern)
        parity = sum(bits) % 2
        slot = table[parity][column_score(pattern)]
        top = bits[0]
        if slot[top] != -1:
            raise AssertionError("two MOG column patterns share (parity, score, top bit)")
        slot[top] = pattern
    return tuple(tuple((s[0], s[1]) for s in row) for row in table)


def mog_column_patterns() -> Tensor:
    """Table ``P[p, a, u]`` (int64, shape (2, 4, 2)): the column pattern with parity p, score a, top bit u.

    For each (parity, score) exactly two patterns exist; they are complements with opposite top bits.
    This table is what the Leech decoder uses to turn (parity, hexacode symbol, top bit) into bits.
    """
    return torch.tensor(_column_patterns(), dtype=torch.int64)


@lru_cache(maxsize=1)
def _codeword_masks() -> tuple[int, ...]:
    """Codewords as 24-bit integers (bit i = coordinate i), enumerated by (p, hexacode word, top bits)."""
    patterns = _column_patterns()
    masks = []
    for parity in range(2):
        for word in _hexacode():
            for tops in range(2**MOG_COLUMNS):
                top_bits = [(tops >> col) & 1 for col in range(MOG_COLUMNS)]
                if sum(top_bits) % 2 != parity:
                    continue
                mask = 0
                for col, (symbol, top) in enumerate(zip(word, top_bits, strict=True)):
                    for row, bit in enumerate(column_bits(patterns[parity][symbol][top])):
                        mask |= bit << (MOG_ROWS * col + row)
                masks.append(mask)
    return tuple(masks)


def _masks_to_bits(masks: Tensor) -> Tensor:
    shifts = torch.arange(GOLAY_LENGTH, dtype=torch.int64)
    return ((masks.unsqueeze(-1) >> shifts) & 1).to(torch.uint8)


def golay_codewords() -> Tensor:
    """All 4,096 codewords of the extended binary Golay code, uint8 0/1 of shape (4096, 24).

    MOG coordinates (index = 4·column + row). Row 0 is the zero word.
    """
    return _masks_to_bits(torch.tensor(_codeword_masks(), dtype=torch.int64))


@lru_cache(maxsize=1)
def _generator_rows() -> tuple[int, ...]:
    # Gaussian elimination over GF(2) on 24-bit masks, ending in reduced row echelon form.
    pivots: dict[int, int] = {}  # pivot bit -> row mask
    for mask in _codeword_masks():
        for bit, row in sorted(pivots.items()):
            if (mask >> bit) & 1:
                mask ^= row
        if mask == 0:
            continue
        bit = (mask & -mask).bit_length() - 1  # lowest set bit becomes the pivot
        for other_bit, other in list(pivots.items()):
            if (other >> bit) & 1:
                pivots[other_bit] = other ^ mask
        pivots[bit] = mask
    if len(pivots) != GOLAY_DIMENSION:
        raise AssertionError(f"Golay code has rank {len(pivots)}, expected {GOLAY_DIMENSION}")
    return tuple(pivots[bit] for bit in sorted(pivots))


def golay_generator_matrix() -> Tensor:
    """A 12×24 generator matrix (uint8) in reduced row echelon form.

    The Golay code is self-dual, so this matrix is also a parity-check matrix: a word c is a
    codeword iff ``G @ c ≡ 0 (mod 2)``.
    """
    return _masks_to_bits(torch.tensor(_generator_rows(), dtype=torch.int64))


def golay_syndrome(bits: Tensor) -> Tensor:
    """Syndrome ``G @ c mod 2`` (int64, shape (..., 12)) of 0/1 words of shape (..., 24)."""
    if bits.shape[-1:] != (GOLAY_LENGTH,):
        raise ValueError(
            f"Golay words have {GOLAY_LENGTH} coordinates in the last dim; got shape {tuple(bits.shape)}"
        )
    words = bits.to(torch.int64)
    if bool(((words != 0) & (words != 1)).any()):
        raise ValueError("Golay words must contain only 0 and 1; reduce the input modulo 2 first")
    # Float matmul: sums of at most 24 ones are exact, and integer matmul is unavailable on CUDA.
    generator = golay_generator_matrix().to(device=bits.device, dtype=torch.float32)
    return (words.to(torch.float32) @ generator.T).to(torch.int64) % 2


def is_golay_codeword(bits: Tensor) -> Tensor:
    """Boolean tensor of shape (...): whether each 0/1 word of shape (..., 24) is a Golay codeword."""
    return (golay_syndrome(bits) == 0).all(dim=-1)

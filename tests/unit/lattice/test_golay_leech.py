# SPDX-License-Identifier: AGPL-3.0-or-later
"""The Golay code, the hexacode and the Leech lattice: structure, membership, and the exact fast decoder."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lila_model.lattice.golay import (
    GOLAY_LENGTH,
    OMEGA,
    OMEGA_BAR,
    column_bits,
    column_score,
    gf4_mul,
    golay_codewords,
    golay_generator_matrix,
    golay_syndrome,
    hexacode_words,
    is_golay_codeword,
    mog_column_patterns,
)
from lila_model.lattice.leech import (
    LEECH_COVOLUME,
    LEECH_DIM,
    LEECH_KISSING_NUMBER,
    LEECH_MIN_NORM2,
    LEECH_SCALE,
    is_leech_point,
    leech_generator_matrix,
    leech_gram_matrix,
    leech_min_vectors,
    nearest_leech,
    nearest_leech_reference,
    nearest_leech_with_distance,
)

NSM_LEECH = 0.065771  # Conway & Sloane, normalized second moment of Λ24
HALF_MIN_DISTANCE = LEECH_MIN_NORM2**0.5 / 2  # packing radius of √8·Λ24
# Minimal vector v is a Voronoi-relevant direction: x − p stays in the cell only if ⟨x − p, v⟩ ≤ |v|²/2.
VORONOI_BOUND = LEECH_MIN_NORM2 / 2
COVERING_RADIUS2 = LEECH_MIN_NORM2 / 2  # Λ24's covering radius is √2 at min norm² 4 (Conway–Parker–Sloane)


def _masks(bits: torch.Tensor) -> torch.Tensor:
    """0/1 words (N, 24) as 24-bit integers."""
    return (bits.to(torch.int64) << torch.arange(GOLAY_LENGTH)).sum(-1)


def _vector_keys(vectors: torch.Tensor) -> set[tuple[int, int]]:
    """Vectors with entries in [-4, 4] as exact integer keys (base 9, two halves of 12 coordinates)."""
    digits = (vectors + 4).to(torch.int64).view(-1, 2, 12)
    keys = (digits * 9 ** torch.arange(12)).sum(-1)  # (N, 2), each < 9¹² < 2⁶³
    return set(zip(keys[:, 0].tolist(), keys[:, 1].tolist(), strict=True))


@pytest.fixture(scope="module")
def codewords() -> torch.Tensor:
    return golay_codewords()


@pytest.fixture(scope="module")
def min_vectors() -> torch.Tensor:
    return leech_min_vectors()


# --- GF(4), hexacode, MOG ---------------------------------------------------------------------


def test_gf4_multiplication_follows_omega_rules():
    assert gf4_mul(OMEGA, OMEGA) == OMEGA_BAR
    assert gf4_mul(OMEGA, OMEGA_BAR) == 1
    assert gf4_mul(OMEGA_BAR, OMEGA_BAR) == OMEGA
    for a in range(4):
        assert gf4_mul(a, 1) == a and gf4_mul(a, 0) == 0
        for b in range(4):
            for c in range(4):  # distributive over XOR addition, associative
                assert gf4_mul(a, b ^ c) == gf4_mul(a, b) ^ gf4_mul(a, c)
                assert gf4_mul(gf4_mul(a, b), c) == gf4_mul(a, gf4_mul(b, c))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        gf4_mul(4, 1)


def test_hexacode_has_64_words_with_weights_0_4_6():
    words = hexacode_words()
    assert words.shape == (64, 6)
    assert len({tuple(w) for w in words.tolist()}) == 64
    assert Counter((words != 0).sum(-1).tolist()) == {0: 1, 4: 45, 6: 18}
    as_set = {tuple(w) for w in words.tolist()}
    for u in words[:16].tolist():  # linear over GF(4): closed under + and scalar multiplication
        for v in words.tolist():
            assert tuple(a ^ b for a, b in zip(u, v, strict=True)) in as_set
        assert tuple(gf4_mul(OMEGA, a) for a in u) in as_set


def test_mog_column_patterns_pair_complements_by_parity_and_score():
    table = mog_column_patterns()
    assert table.shape == (2, 4, 2)
    assert sorted(table.flatten().tolist()) == list(range(16))
    for p in range(2):
        for a in range(4):
            low, high = table[p, a].tolist()
            assert low ^ high == 0b1111  # complements
            assert column_bits(low)[0] == 0 and column_bits(high)[0] == 1
            for pattern in (low, high):
                assert sum(column_bits(pattern)) % 2 == p and column_score(pattern) == a


# --- Golay code --------------------------------------------------------------------------------


def test_golay_weight_distribution(codewords):
    assert codewords.shape == (4096, 24) and codewords.dtype == torch.uint8
    assert len(set(_masks(codewords).tolist())) == 4096
    weights = Counter(codewords.sum(-1).tolist())
    assert weights == {0: 1, 8: 759, 12: 2576, 16: 759, 24: 1}


def test_golay_closed_under_xor_with_minimum_distance_8(codewords):
    masks = _masks(codewords)
    member = torch.zeros(2**GOLAY_LENGTH, dtype=torch.bool)
    member[masks] = True
    assert bool(member[masks.unsqueeze(1) ^ masks.unsqueeze(0)].all())  # all 4096² sums are codewords
    distances = (codewords.unsqueeze(1) != codewords[:512].unsqueeze(0)).sum(-1)  # (4096, 512)
    off_diagonal = distances[distances > 0]
    assert int(off_diagonal.min()) == 8
    assert int((distances == 0).sum()) == 512  # each word meets only itself at distance 0


def test_generator_matrix_spans_the_code_and_is_self_dual(codewords):
    gen = golay_generator_matrix().to(torch.int64)
    assert gen.shape == (12, 24)
    assert bool(((gen @ gen.T) % 2 == 0).all())  # self-dual: G is also a parity-check matrix
    coeffs = (torch.arange(4096).unsqueeze(-1) >> torch.arange(12)) & 1  # all 2^12 combinations
    span = (coeffs @ gen) % 2
    assert set(_masks(span).tolist()) == set(_masks(codewords).tolist())


def test_is_golay_codeword_accepts_codewords_and_rejects_others(codewords):
    assert bool(is_golay_codeword(codewords).all())
    assert bool((golay_syndrome(codewords) == 0).all())
    flipped = codewords.clone()
    flipped[torch.arange(4096), torch.arange(4096) % 24] ^= 1  # one bit off: never a codeword
    assert not bool(is_golay_codeword(flipped).any())
    gen = torch.Generator().manual_seed(1)
    random_words = torch.randint(0, 2, (3000, 24), generator=gen, dtype=torch.uint8)
    expected = torch.isin(_masks(random_words), _masks(codewords))
    assert torch.equal(is_golay_codeword(random_words), expected)
    with pytest.raises(ValueError, match="only 0 and 1"):
        is_golay_codeword(torch.full((24,), 2))
    with pytest.raises(ValueError, match="24 coordinates"):
        is_golay_codeword(torch.zeros(23))


# --- Leech lattice structure --------------------------------------------------------------------


def test_leech_has_196560_distinct_minimal_vectors_of_norm_32(min_vectors):
    assert min_vectors.shape == (LEECH_KISSING_NUMBER, 24) == (196_560, 24)
    assert min_vectors.dtype == torch.int64
    assert bool(((min_vectors**2).sum(-1) == LEECH_MIN_NORM2).all())
    keys = _vector_keys(min_vectors)
    assert len(keys) == 196_560  # distinct
    assert bool(is_leech_point(min_vectors).all())
    biggest, support = min_vectors.abs().amax(-1), (min_vectors != 0).sum(-1)
    assert int(((biggest == 2) & (support == 8)).sum()) == 97_152  # (±2⁸, 0¹⁶)
    assert int(((biggest == 4) & (support == 2)).sum()) == 1_104  # (±4², 0²²)
    assert int(((biggest == 3) & (support == 24)).sum()) == 98_304  # (∓3, ±1²³)
    assert _vector_keys(-min_vectors) == keys  # closed under negation


def test_is_leech_point_rejects_near_misses(min_vectors):
    odd = torch.tensor([-3] + [1] * 23)
    assert bool(is_leech_point(odd))
    assert bool(is_leech_point(min_vectors[:500] + min_vectors[-500:]).all())  # closed under +
    assert bool(is_leech_point(-min_vectors[::1000]).all())
    e = torch.eye(24, dtype=torch.int64)
    assert not bool(is_leech_point(2 * e).any())  # norm 4 < 32
    assert not bool(is_leech_point(4 * e).any())  # Σw odd in the even coset
    assert not bool(is_leech_point(torch.ones(24)))  # all odd, Σw = 0 but t = 1
    assert not bool(is_leech_point(odd + 2 * e[0]))  # (−1, 1²³): Golay part is not a codeword
    assert not bool(is_leech_point(min_vectors[0].double() + 0.5))  # non-integral
    assert not bool(is_leech_point(torch.tensor([float("nan")] + [0.0] * 23)))
    assert not bool(is_leech_point(torch.tensor([8e30] + [0.0] * 23)))  # beyond exact integers
    mixed = torch.zeros(24, dtype=torch.int64)
    mixed[0] = 1  # mixed parities
    assert not bool(is_leech_point(mixed))


def _exact_det(matrix: list[list[int]]) -> int:
    """Bareiss fraction-free determinant (exact integer arithmetic)."""
    a = [row[:] for row in matrix]
    n, sign, prev = len(a), 1, 1
    for k in range(n - 1):
        if a[k][k] == 0:
            swap = next(i for i in range(k + 1, n) if a[i][k] != 0)
            a[k], a[swap], sign = a[swap], a[k], -sign
        for i in range(k + 1, n):
            for j in range(k + 1, n):
                a[i][j] = (a[i][j] * a[k][k] - a[i][k] * a[k][j]) // prev
        prev = a[k][k]
    return sign * a[-1][-1]


def test_leech_is_even_unimodular(min_vectors):
    basis = leech_generator_matrix()
    assert basis.shape == (24, 24)
    assert bool(is_leech_point(basis).all())
    raw = basis @ basis.T
    assert bool((raw % 8 == 0).all())  # unit-scaled (÷8) inner products are integers
    gram = leech_gram_matrix()
    assert torch.equal(gram * 8, raw)
    assert bool((gram.diagonal() % 2 == 0).all())  # even
    assert _exact_det(gram.tolist()) == 1  # unimodular
    assert _exact_det(basis.tolist()) ** 2 == LEECH_COVOLUME**2
    assert LEECH_SCALE**2 * LEECH_MIN_NORM2 == pytest.approx(4.0)
    # the basis generates every minimal vector: integer coordinates that reproduce it exactly
    coords = torch.linalg.solve_triangular(basis.double().T, min_vectors.double().T, upper=False).T
    rounded = coords.round().to(torch.int64)
    assert float((coords - rounded).abs().max()) < 1e-6
    assert torch.equal(rounded @ basis, min_vectors)


# --- The decoder ---------------------------------------------------------------------------------


def _lattice_points(count: int, gen: torch.Generator, spread: int = 3) -> torch.Tensor:
    coeffs = torch.randint(-spread, spread + 1, (count, 24), generator=gen)
    return (coeffs @ leech_generator_matrix()).double()


@pytest.mark.parametrize("kind", ["box", "wide", "noisy_lattice"])
def test_nearest_leech_matches_reference_decoder(kind):
    gen = torch.Generator().manual_seed({"box": 2, "wide": 3, "noisy_lattice": 4}[kind])
    n = 1500
    if kind == "box":
        x = (torch.rand(n, 24, generator=gen, dtype=torch.float64) * 2 - 1) * 8
    elif kind == "wide":
        x = torch.randn(n, 24, generator=gen, dtype=torch.float64) * 200
    else:  # lattice points plus noise of about the covering radius
        x = _lattice_points(n, gen) + torch.randn(n, 24, generator=gen, dtype=torch.float64) * 0.8
    fast, dist = nearest_leech_with_distance(x)
    ref = nearest_leech_reference(x)
    assert torch.equal(fast, ref)
    assert bool(is_leech_point(fast).all())
    assert torch.allclose(dist, (x - fast).square().sum(-1), rtol=0, atol=1e-6 * (1 + x.abs().amax()))


def test_reference_pruning_matches_brute_force():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(24, 24, generator=gen, dtype=torch.float64) * 3
    brute = nearest_leech_reference(x, candidates=8192)
    assert torch.equal(nearest_leech_reference(x, candidates=1), brute)  # forces the fallback path
    assert torch.equal(nearest_leech_reference(x), brute)


def test_small_noise_decodes_to_the_original_point():
    gen = torch.Generator().manual_seed(6)
    points = _lattice_points(2000, gen)
    noise = torch.randn(2000, 24, generator=gen, dtype=torch.float64) * 0.2
    assert float(noise.norm(dim=-1).max()) < HALF_MIN_DISTANCE  # inside the packing ball
    assert torch.equal(nearest_leech(points + noise), points)
    assert torch.equal(nearest_leech(points), points)


def test_float32_agrees_with_float64_and_outputs_are_members():
    gen = torch.Generator().manual_seed(7)
    x = (torch.rand(3000, 24, generator=gen) * 2 - 1) * 16
    out32, dist32 = nearest_leech_with_distance(x)
    assert out32.dtype == torch.float32
    assert bool(is_leech_point(out32).all())
    out64 = nearest_leech(x.double())
    d32, d64 = (x.double() - out32.double()).square().sum(-1), (x.double() - out64).square().sum(-1)
    assert float((d32 - d64).abs().max()) < 1e-3  # same point up to float32 near-ties
    assert float((dist32.double() - d32).abs().max()) < 1e-3  # trellis cost is the true distance


def test_no_minimal_vector_step_gets_closer():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(48, 24, generator=gen, dtype=torch.float64) * 50
    residual = x - nearest_leech(x)
    # ‖x − (p + v)‖² − ‖x − p‖² = |v|² − 2⟨x − p, v⟩ ≥ 0 for all 196,560 minimal v
    inner = residual @ leech_min_vectors().double().T  # (48, 196560)
    assert float(inner.max()) <= VORONOI_BOUND + 1e-9


def test_decoder_commutes_with_lattice_translations_and_negation():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(500, 24, generator=gen, dtype=torch.float64) * 5
    shift = _lattice_points(500, gen, spread=20)
    assert torch.equal(nearest_leech(x + shift), nearest_leech(x) + shift)
    assert torch.equal(nearest_leech(-x), -nearest_leech(x))


def test_empirical_normalized_second_moment():
    gen = torch.Generator().manual_seed(10)
    # U[0, 8)²⁴ is exactly uniform modulo the lattice, because 8ℤ²⁴ ⊂ √8·Λ24
    x = torch.rand(40_000, 24, generator=gen, dtype=torch.float64) * 8
    err2 = (x - nearest_leech(x)).square().sum(-1)
    nsm = float(err2.mean()) / (LEECH_DIM * LEECH_COVOLUME ** (2 / LEECH_DIM))
    assert nsm == pytest.approx(NSM_LEECH, rel=5e-3)
    assert float(err2.max()) <= COVERING_RADIUS2


def test_shapes_dtypes_and_chunking():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 50, 24, generator=gen) * 4
    out = nearest_leech(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(nearest_leech(x, chunk_size=7), out)  # chunk boundaries change nothing
    assert torch.equal(nearest_leech(x.reshape(-1, 24)).view(x.shape), out)
    half = nearest_leech(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.float(), nearest_leech(x.to(torch.bfloat16).float()))
    assert nearest_leech(torch.empty(0, 24)).shape == (0, 24)
    assert nearest_leech(x[0, 0, 0]).shape == (24,)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="24 coordinates"):
        nearest_leech(torch.zeros(4, 23))
    with pytest.raises(TypeError, match="floating"):
        nearest_leech(torch.zeros(4, 24, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        nearest_leech(torch.full((2, 24), float("nan")))
    with pytest.raises(ValueError, match="magnitude"):
        nearest_leech(torch.full((2, 24), 1e9))
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_leech(torch.zeros(2, 24), chunk_size=0)
    with pytest.raises(ValueError, match="candidates"):
        nearest_leech_reference(torch.zeros(2, 24), candidates=0)

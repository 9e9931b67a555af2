# SPDX-License-Identifier: AGPL-3.0-or-later
"""E8 lattice: roots, exact nearest point, normalized second moment, root support function."""

from __future__ import annotations

import pytest
import torch

from lila_model.lattice.e8 import E8_NUM_ROOTS, e8_roots, max_root_inner_cols, nearest_e8

G_E8 = 0.071682  # normalized second moment of E8 (Conway & Sloane)
G_TOLERANCE = 0.005  # relative
EXACT_POINTS = 100_000
UNIFORM_POINTS = 1_000_000
DIST_TOL = 1e-4  # float32 distance arithmetic on inputs of magnitude ~10


def _is_e8(p: torch.Tensor) -> torch.Tensor:
    """Membership in E8 = D8 ∪ (D8 + ½), checked from the definition."""
    twice = p * 2
    integral = (twice == torch.round(twice)).all(-1)
    frac = p - torch.floor(p)
    all_int = (frac == 0).all(-1)
    all_half = (frac == 0.5).all(-1)
    even_sum = torch.remainder(p.sum(-1), 2) == 0
    return integral & (all_int | all_half) & even_sum


def test_roots_are_the_240_norm_2_vectors_of_e8():
    roots = e8_roots()
    assert roots.shape == (E8_NUM_ROOTS, 8) and roots.dtype == torch.float32
    assert torch.equal(roots.square().sum(-1), torch.full((240,), 2.0))
    assert bool(_is_e8(roots).all())
    assert len({tuple(r.tolist()) for r in roots}) == 240
    integer = (roots == torch.round(roots)).all(-1)
    assert int(integer.sum()) == 112 and int((~integer).sum()) == 128
    # every half-integer root has an even number of minus signs
    assert bool((torch.remainder((roots[~integer] < 0).sum(-1), 2) == 0).all())
    # brute force: every norm-2 vector of E8 with entries in {0, ±½, ±1} is a root
    values = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    grid = torch.cartesian_prod(*[values] * 8)  # [5**8, 8]
    found = grid[(grid.square().sum(-1) == 2.0) & _is_e8(grid)]
    assert {tuple(r.tolist()) for r in found} == {tuple(r.tolist()) for r in roots}


def test_nearest_e8_exact_against_all_roots():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(EXACT_POINTS, 8, generator=gen) * 3.0
    p = nearest_e8(x)
    assert bool(_is_e8(p).all())
    roots = e8_roots()
    d0 = (x - p).square().sum(-1)
    # p is the nearest point iff no neighbour p + r (r a Voronoi-relevant vector: the roots) is closer
    for chunk in torch.split(torch.arange(EXACT_POINTS), 20_000):
        dn = (x[chunk, None, :] - p[chunk, None, :] - roots[None]).square().sum(-1)  # [n, 240]
        assert bool((dn >= d0[chunk, None] - DIST_TOL).all())


def test_nearest_e8_on_lattice_points_and_ties_is_deterministic():
    gen = torch.Generator().manual_seed(2)
    p = nearest_e8(torch.randn(10_000, 8, generator=gen) * 5)
    assert torch.equal(nearest_e8(p), p)  # lattice points map to themselves
    # midpoints between a point and a neighbour: a tie, resolved to one of the two, identically each time
    mid = p + 0.5 * e8_roots()[torch.randint(0, 240, (10_000,), generator=gen)]
    first, second = nearest_e8(mid), nearest_e8(mid.clone())
    assert torch.equal(first, second)
    dist = (first - mid).square().sum(-1)
    assert torch.allclose(dist, torch.full_like(dist, 0.5))


def test_normalized_second_moment_matches_theory():
    gen = torch.Generator().manual_seed(3)
    # [0, 2)^8 is a union of 256 fundamental regions of E8, so x − Q(x) is uniform on the Voronoi cell
    x = torch.rand(UNIFORM_POINTS, 8, generator=gen, dtype=torch.float64) * 2
    err = x - nearest_e8(x)
    g = float(err.square().sum(-1).mean()) / 8  # covolume 1: G = E|e|² / n
    assert abs(g - G_E8) / G_E8 < G_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_batch_shapes(dtype):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 5, 8, generator=gen) * 4).to(dtype)
    p = nearest_e8(x)
    assert p.shape == x.shape and p.dtype == dtype
    expected = nearest_e8(x.to(torch.float64)).to(dtype)
    assert torch.equal(p, expected)


def test_chunking_does_not_change_results():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5_000, 8, generator=gen) * 2
    assert torch.equal(nearest_e8(x, chunk_vectors=7), nearest_e8(x))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="last dimension of size 8"):
        nearest_e8(torch.zeros(4, 7))
    with pytest.raises(TypeError, match="floating"):
        nearest_e8(torch.zeros(4, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="chunk_vectors"):
        nearest_e8(torch.zeros(4, 8), chunk_vectors=0)


def test_max_root_inner_matches_brute_force():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(20_000, 8, generator=gen) * 3
    h = max_root_inner_cols(x.t().contiguous())
    brute = (x @ e8_roots().t()).max(-1).values
    assert torch.allclose(h, brute, atol=1e-5)
    p = nearest_e8(x)  # on lattice points the value is an integer
    hp = max_root_inner_cols(p.t().contiguous())
    assert torch.equal(hp, (p @ e8_roots().t()).max(-1).values)
    assert torch.equal(hp, torch.round(hp))

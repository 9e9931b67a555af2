# SPDX-License-Identifier: AGPL-3.0-or-later
"""Seeded Hadamard rotation and the portable random streams behind rotation signs and dither."""

from __future__ import annotations

import pytest
import torch

from lila_codec.dither import DITHER_BITS, uniform01
from lila_codec.hadamard import hadamard_matrix, random_signs, rotate, stream_keys, unrotate_exact

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _splitmix_reference(z: int) -> int:
    """splitmix64's finalizer in plain Python integers (independent of the numpy implementation)."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5])
def test_streams_match_a_pure_python_reference(seed):
    stream, start, count = 0x1234, 17, 40
    base = _splitmix_reference((seed ^ (stream << 32)) & MASK64)
    expected = [_splitmix_reference((base + (start + i) * GOLDEN) & MASK64) for i in range(count)]
    assert stream_keys(seed, stream, count, start).tolist() == expected


def test_signs_and_uniforms_are_well_formed_and_seeded():
    d = random_signs(7, 4096)
    assert set(d.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(d.mean())) < 0.1
    assert not torch.equal(d, random_signs(8, 4096))
    u = uniform01(7, 100_000)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u * 2**DITHER_BITS, torch.round(u * 2**DITHER_BITS))  # on the 2**-24 grid
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert torch.equal(uniform01(7, 50, start=30), u[30:80])  # counter-based: any slice on its own


@pytest.mark.parametrize("size", [2, 8, 64, 256])
def test_hadamard_is_orthogonal_and_rotation_inverts(size):
    h = hadamard_matrix(size, torch.float64)
    assert torch.equal(h @ h, size * torch.eye(size, dtype=torch.float64))
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(size * 10, generator=gen)
    y = rotate(x, seed=3, size=size)
    assert torch.allclose(y.norm(), x.norm(), rtol=1e-5)
    t = torch.round(y.double() * 2**20).view(-1, size)  # integer-valued, as the decoder feeds it
    back = unrotate_exact(t, seed=3, size=size) * (2**-20 * size**-0.5)
    assert torch.allclose(back.reshape(-1).float(), x, atol=1e-5)


def test_exact_unrotation_is_independent_of_threads():
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(-(2**30), 2**30, (4096, 64), generator=gen).double()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = unrotate_exact(t, seed=1, size=64)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, unrotate_exact(t, seed=1, size=64))
    # exact integers: the same as a sum computed in Python
    row = t[0].tolist()
    h = hadamard_matrix(64, torch.float64)
    d = random_signs(1, 64, torch.float64)
    for j in (0, 17, 63):
        assert single[0, j].item() == d[j].item() * sum(
            int(a) * int(b) for a, b in zip(row, h[:, j].tolist(), strict=True)
        )

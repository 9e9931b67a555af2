# SPDX-License-Identifier: AGPL-3.0-or-later
"""The E8 resonance branch, the Leech resonance loss and the resonance monitor."""

from __future__ import annotations

import math

import torch

from lila_model.config import LEECH_MIN_NORM, get_preset
from lila_model.lattice.e8 import e8_roots
from lila_model.lattice.leech import leech_min_vectors
from lila_model.resonance import E8Resonance, lattice_directions, leech_resonance_loss, max_cosine


def e8_branch() -> E8Resonance:
    torch.manual_seed(0)
    return E8Resonance(get_preset("debug", variant="e8", vocab_size=64, e8_strength_init=0.5))


def test_e8_branch_forward_uses_the_nearest_root_and_backward_the_soft_one() -> None:
    branch = e8_branch()
    h = torch.randn(2, 5, 144, requires_grad=True)
    out, geo = branch(h)
    with torch.no_grad():
        z = branch.down(h)  # [2, 5, 8]
        roots = e8_roots()
        nearest = roots[((z[..., None, :] - roots) ** 2).sum(-1).argmin(-1)]  # [2, 5, 8]
        torch.testing.assert_close(out, 0.5 * branch.up(nearest), rtol=1e-6, atol=1e-6)
        cos = (z[..., None, :] * roots).sum(-1).amax(-1) / (z.norm(dim=-1) * math.sqrt(2.0))
        torch.testing.assert_close(geo, (1 - cos).mean())
    (out.sum() + geo).backward()
    assert branch.down.weight.grad is not None and branch.down.weight.grad.abs().sum() > 0
    assert branch.strength.grad is not None and h.grad is not None


def test_e8_geo_loss_is_zero_on_root_directions() -> None:
    branch = e8_branch()
    with torch.no_grad():
        branch.down.weight.zero_()
        branch.down.weight[:, :8] = torch.eye(8) * 0.3
    h = torch.zeros(1, 3, 144)
    h[0, :, :8] = e8_roots()[[0, 100, 239]]
    with torch.no_grad():
        _, geo = branch(h)
    assert abs(float(geo)) < 1e-6


def test_leech_resonance_loss_is_zero_on_lattice_directions_and_bounded() -> None:
    vectors = leech_min_vectors()[[0, 5000, 97200, 150000]].float()  # one of each shape and more
    hidden = (vectors * 0.01).reshape(1, 1, 96)  # any length: the loss normalizes
    assert float(leech_resonance_loss(hidden, radius=LEECH_MIN_NORM)) < 1e-12  # float32 rounding only
    torch.manual_seed(0)
    noise = torch.randn(2, 16, 144)
    loss = float(leech_resonance_loss(noise, radius=LEECH_MIN_NORM))
    assert 0.1 < loss <= 0.5  # covering radius 4: at most 16/32


def test_leech_resonance_loss_stride_subsamples_positions() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 10, 48)
    strided = leech_resonance_loss(hidden, radius=LEECH_MIN_NORM, stride=4)
    manual = leech_resonance_loss(hidden[:, [0, 4, 8]], radius=LEECH_MIN_NORM)
    assert float(strided) == float(manual)
    hidden.requires_grad_(True)
    leech_resonance_loss(hidden, radius=LEECH_MIN_NORM, stride=4).backward()
    assert hidden.grad[:, 1].abs().sum() == 0 and hidden.grad[:, 4].abs().sum() > 0


def test_max_cosine_exact_values() -> None:
    e8 = lattice_directions("e8")
    leech = lattice_directions("leech")
    assert e8.shape == (240, 8) and leech.shape == (196560, 24)
    axis8 = torch.zeros(1, 8)
    axis8[0, 0] = 1.0
    # Closest roots to an axis are (±1, ±1, 0⁶): cosine 1/√2.
    assert math.isclose(float(max_cosine(axis8, e8)), 1 / math.sqrt(2), rel_tol=1e-6)
    axis24 = torch.zeros(1, 24)
    axis24[0, 3] = -2.5
    # Closest minimal vectors to an axis are (±4, ±4, 0²²): cosine 4/√32 = 1/√2.
    assert math.isclose(float(max_cosine(axis24, leech)), 1 / math.sqrt(2), rel_tol=1e-6)
    hidden = torch.cat([e8_roots()[7], axis8[0]]).unsqueeze(0)  # blocks: a root (1.0), an axis (0.707)
    assert math.isclose(float(max_cosine(hidden, e8)), (1 + 1 / math.sqrt(2)) / 2, rel_tol=1e-6)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""DiLoCo outer step: the Nesterov formula, flat parameter round trip, refusal of bad input."""

from __future__ import annotations

import pytest
import torch

from lila_model.config import get_preset
from lila_model.model import LilaLM
from peer.outer import OuterOptimizer, flatten_parameters, load_flat_parameters


def test_nesterov_step_matches_formula() -> None:
    theta = torch.tensor([1.0, -2.0, 0.5])
    opt = OuterOptimizer(theta, lr=0.5, momentum=0.9, nesterov=True)
    d1 = torch.tensor([0.1, 0.2, -0.4])
    d2 = torch.tensor([-0.3, 0.0, 0.2])
    opt.step(d1)
    m1 = d1
    expected = theta - 0.5 * (d1 + 0.9 * m1)
    assert torch.allclose(opt.global_params, expected)
    opt.step(d2)
    m2 = 0.9 * m1 + d2
    expected = expected - 0.5 * (d2 + 0.9 * m2)
    assert torch.allclose(opt.global_params, expected)
    assert opt.step_count == 2


def test_lr_one_without_momentum_is_parameter_averaging() -> None:
    theta = torch.tensor([1.0, 2.0])
    locals_ = [torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])]
    opt = OuterOptimizer(theta, lr=1.0, momentum=0.0)
    opt.step(torch.stack([opt.pseudo_gradient(p) for p in locals_]).mean(0))
    assert torch.equal(opt.global_params, torch.stack(locals_).mean(0))


def test_same_bytes_give_identical_hashes_and_bad_deltas_are_refused() -> None:
    a = OuterOptimizer(torch.linspace(-1, 1, 1000), lr=0.7, momentum=0.9)
    b = OuterOptimizer(torch.linspace(-1, 1, 1000), lr=0.7, momentum=0.9)
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a.step(delta)
    b.step(delta.clone())
    assert a.params_hash() == b.params_hash()
    with pytest.raises(ValueError, match="non-finite"):
        a.step(torch.full((1000,), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        a.step(torch.zeros(999))


def test_flat_round_trip() -> None:
    model = LilaLM(get_preset("debug", n_layers=1))
    flat = flatten_parameters(model)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    load_flat_parameters(model, flat)
    assert torch.equal(flatten_parameters(model), flat)

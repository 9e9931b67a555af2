# SPDX-License-Identifier: AGPL-3.0-or-later
"""Training behaviour: the loss falls for every variant, losses are reported separately, options agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lila_model.config import VARIANTS, get_preset
from lila_model.model import LilaLM

VOCAB = 128
STEPS = 12
LR = 3e-3


def tiny(variant: str, **kw) -> LilaLM:
    torch.manual_seed(0)
    return LilaLM(
        get_preset("debug", variant=variant, vocab_size=VOCAB, block_size=64, n_layers=2, leech_every=1, **kw)
    )


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    data = torch.randint(0, VOCAB, (4, 33), generator=gen)
    return data[:, :-1], data[:, 1:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(variant: str) -> None:
    model = tiny(variant).train()
    idx, targets = fixed_batch()
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=LR)
    first_ce = first_loss = None
    for _ in range(STEPS):
        out = model(idx, targets)
        if first_ce is None:
            first_ce, first_loss = float(out.ce_loss.detach()), float(out.loss.detach())
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = model(idx, targets)
    assert first_ce > 4.5  # ≈ ln(128) = 4.85 at init
    assert float(last.ce_loss) < first_ce - 1.0
    assert float(last.loss) < first_loss


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_is_ce_plus_weighted_geo(variant: str) -> None:
    model = tiny(variant, lambda_geo=0.25)
    idx, targets = fixed_batch()
    out = model(idx, targets)
    expected_ce = F.cross_entropy(out.logits.reshape(-1, VOCAB), targets.reshape(-1))
    torch.testing.assert_close(out.ce_loss, expected_ce)
    torch.testing.assert_close(out.loss, out.ce_loss + 0.25 * out.geo_loss)
    if variant == "vanilla":
        assert float(out.geo_loss.detach()) == 0.0
    else:
        assert 0.0 < float(out.geo_loss.detach()) < 1.0
    assert model(idx).loss is None


def test_ignore_index_and_loss_mask() -> None:
    model = tiny("vanilla")
    idx, targets = fixed_batch()
    with torch.no_grad():
        logits = model(idx).logits
        per_token = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none").view(
            4, 32
        )
        ignored = targets.clone()
        ignored[:, :10] = -100
        torch.testing.assert_close(model(idx, ignored).ce_loss, per_token[:, 10:].mean())
        mask = torch.zeros(4, 32)
        mask[1, 5:9] = 1.0
        torch.testing.assert_close(model(idx, targets, loss_mask=mask).ce_loss, per_token[1, 5:9].mean())
        half = mask * 0.5  # fractional weights: still the weighted mean
        torch.testing.assert_close(model(idx, targets, loss_mask=half).ce_loss, per_token[1, 5:9].mean())
        assert float(model(idx, targets, loss_mask=torch.zeros(4, 32)).ce_loss) == 0.0
        with pytest.raises(ValueError, match="loss_mask shape"):
            model(idx, targets, loss_mask=mask[:, :3])


@pytest.mark.parametrize("variant", ["vanilla", "leech"])
def test_activation_checkpointing_gives_the_same_gradients(variant: str) -> None:
    idx, targets = fixed_batch()
    grads = []
    for flag in (False, True):
        model = tiny(variant, activation_checkpointing=flag).train()
        model(idx, targets).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_geometry_scales_receive_gradients() -> None:
    idx, targets = fixed_batch()
    for variant in ("e8", "leech"):
        model = tiny(variant).train()
        model(idx, targets).loss.backward()
        scales = dict(model.iter_geometry_scales())
        assert scales, variant
        for name, param in scales.items():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_too_long_input_is_rejected() -> None:
    model = tiny("vanilla")
    with pytest.raises(ValueError, match="exceeds block_size=64"):
        model(torch.zeros(1, 65, dtype=torch.long))

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Causality for every variant: changing tokens after t never changes the logits at positions ≤ t."""

from __future__ import annotations

import pytest
import torch

from lila_model.config import VARIANTS
from lila_model.model import LilaLM
from tests.helpers.models import tiny_model

VOCAB = 256
SEQ = 24


def activated_model(variant: str, *, position: str = "rope") -> LilaLM:
    """A tiny model of ``variant`` with every geometric part switched on (non-zero scales)."""
    model = tiny_model(variant, vocab_size=VOCAB, block_size=64, position=position).eval()
    with torch.no_grad():
        for name, param in model.iter_geometry_scales():
            if name.endswith("bias_scale"):
                param.fill_(2.0)
            elif name.endswith("strength"):
                param.fill_(0.5)
    return model


@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_future_tokens_do_not_change_past_logits(variant: str, position: str) -> None:
    model = activated_model(variant, position=position)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
    with torch.no_grad():
        base = model(idx).logits
        for t in (0, 7, SEQ - 2):
            changed = idx.clone()
            changed[:, t + 1 :] = (
                idx[:, t + 1 :] + 1 + torch.randint(0, VOCAB - 1, (2, SEQ - t - 1), generator=gen)
            ) % VOCAB
            assert (changed[:, t + 1 :] != idx[:, t + 1 :]).all()
            logits = model(changed).logits
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
            # ... and the test can fail: the logits right after t do move.
            assert (logits[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3


def test_geometry_is_switched_on_in_these_models() -> None:
    e8 = activated_model("e8")
    scales = dict(e8.iter_geometry_scales())
    assert float(scales["blocks.0.attn.bias_scale"].detach()[0]) == 2.0
    assert float(scales["blocks.1.resonance.strength"].detach()) == 0.5
    leech = activated_model("leech")
    assert all(block.attn.snaps for block in leech.blocks)

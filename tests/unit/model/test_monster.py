# SPDX-License-Identifier: AGPL-3.0-or-later
"""The monster variant: its frozen Leech frame, the key permutation and the α phase modulation."""

from __future__ import annotations

import math

import torch

from lila_model.attention import KVCache
from lila_model.config import FINE_STRUCTURE_ALPHA, get_preset
from lila_model.lattice.leech import is_leech_point
from lila_model.model import LilaLM
from lila_model.monster import MonsterAttention, key_permutation, leech_frame, phase_modulate


def test_frame_is_24_orthogonal_minimal_vectors() -> None:
    frame = leech_frame()
    assert frame.shape == (24, 24)
    assert is_leech_point(frame).all()
    assert torch.equal(frame @ frame.T, 32 * torch.eye(24, dtype=torch.int64))
    assert set(frame.abs().unique().tolist()) == {0, 2}  # octad-shaped (±2⁸, 0¹⁶)


def test_key_permutation_is_a_fixed_non_trivial_permutation() -> None:
    perm = key_permutation()
    assert sorted(perm.tolist()) == list(range(24))
    assert perm[:4].tolist() == [1, 6, 11, 16]
    assert (perm == torch.arange(24)).sum() == 0


def _attention_scores(attn: MonsterAttention, x: torch.Tensor) -> torch.Tensor:
    q, k, _ = attn.project(x)
    return q @ k.transpose(-2, -1)


def test_permutation_is_what_makes_the_frozen_maps_act() -> None:
    torch.manual_seed(0)
    cfg = get_preset("debug", variant="monster", vocab_size=64)
    attn = MonsterAttention(cfg, 0)
    assert not any(name in dict(attn.named_parameters()) for name in ("qk_frame", "key_perm"))
    x = torch.randn(2, 6, cfg.d_model)
    plain = x.view(2, 6, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # q = k = x, per head
    plain_scores = plain @ plain.transpose(-2, -1)
    with torch.no_grad():
        shipped = _attention_scores(attn, x)
        attn.key_perm.copy_(torch.arange(24))
        unpermuted = _attention_scores(attn, x)
    # Without the permutation the orthogonal frame cancels exactly (a no-op) ...
    torch.testing.assert_close(unpermuted, plain_scores, rtol=1e-5, atol=1e-5)
    # ... with it the scores change substantially.
    assert (shipped - plain_scores).norm() / plain_scores.norm() > 0.5


def test_monster_has_no_learned_q_or_k_and_the_same_learned_size_as_vanilla() -> None:
    monster = LilaLM(get_preset("debug", variant="monster", vocab_size=64))
    vanilla = LilaLM(get_preset("debug", vocab_size=64))
    names = [n for n, _ in monster.named_parameters()]
    assert not any("qkv" in n for n in names)
    assert monster.num_params() == vanilla.num_params()
    assert "blocks.0.attn.qk_frame" in monster.state_dict()  # frozen, but saved with the weights


def test_phase_modulation() -> None:
    x = torch.zeros(1, 3, 4)
    x[0, :, 0] = 1.0  # plane 0 = (1, 0)
    x[0, :, 3] = 2.0  # plane 1 = (0, 2)
    positions = torch.tensor([0, 1, 137])
    y = phase_modulate(x, positions, FINE_STRUCTURE_ALPHA)
    torch.testing.assert_close(y[0, 0], x[0, 0])  # t = 0: unchanged
    angle = 137 * FINE_STRUCTURE_ALPHA  # ≈ 0.99974 rad
    expected = torch.tensor([math.cos(angle), math.sin(angle), -2 * math.sin(angle), 2 * math.cos(angle)])
    torch.testing.assert_close(y[0, 2], expected)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_monster_model_uses_absolute_positions_under_the_cache() -> None:
    torch.manual_seed(0)
    model = LilaLM(get_preset("debug", variant="monster", vocab_size=64, n_layers=1)).eval()
    idx = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        full = model(idx).logits
        cache = KVCache(1)
        first = model(idx[:, :4], cache=cache).logits
        rest = model(idx[:, 4:], cache=cache).logits
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)

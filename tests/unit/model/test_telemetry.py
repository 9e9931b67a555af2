# SPDX-License-Identifier: AGPL-3.0-or-later
"""Stable rank and condition number telemetry."""

from __future__ import annotations

import math

import pytest
import torch

from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_model.telemetry import layer_telemetry, matrix_stats


def test_matrix_stats_exact_values() -> None:
    # Singular values 3, 2, 1 (rotated so the matrix is not diagonal).
    u, _ = torch.linalg.qr(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    weight = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0])) @ v.T  # [4, 3]
    stats = matrix_stats(weight)
    assert stats.shape == (4, 3)
    assert math.isclose(stats.stable_rank, 14 / 9, rel_tol=1e-5)
    assert math.isclose(stats.condition_number, 3.0, rel_tol=1e-5)
    assert math.isclose(stats.spectral_norm, 3.0, rel_tol=1e-5)


def test_rank_one_and_singular() -> None:
    rank_one = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0, 4.0]))
    stats = matrix_stats(rank_one)
    assert math.isclose(stats.stable_rank, 1.0, rel_tol=1e-6)
    assert stats.condition_number > 1e6 or math.isinf(stats.condition_number)
    assert math.isinf(matrix_stats(torch.zeros(3, 3)).condition_number)
    with pytest.raises(ValueError, match="2-D weight"):
        matrix_stats(torch.zeros(3))


def test_layer_telemetry_covers_attention_and_mlp_weights() -> None:
    torch.manual_seed(0)
    model = LilaLM(get_preset("debug", vocab_size=64, n_layers=2))
    stats = layer_telemetry(model)
    assert sorted(stats) == sorted(
        f"blocks.{i}.{part}"
        for i in range(2)
        for part in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")
    )
    assert stats["blocks.0.mlp.fc"].shape == (576, 144)
    q = model.blocks[1].attn.qkv.weight[:144]
    assert stats["blocks.1.attn.q"] == matrix_stats(q)
    for s in stats.values():
        assert 1.0 <= s.stable_rank <= min(s.shape)
        assert s.condition_number >= 1.0
    monster = layer_telemetry(LilaLM(get_preset("debug", variant="monster", vocab_size=64, n_layers=1)))
    assert sorted(monster) == [
        "blocks.0.attn.proj",
        "blocks.0.attn.v",
        "blocks.0.mlp.fc",
        "blocks.0.mlp.proj",
    ]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Robust aggregation as the run config selects it: norm bound from trust.norm_bound, alignment screening
that catches sign-flipped and random-noise contributions (which a norm bound cannot), never a majority."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from lila_net.aggregation import (
    DEFAULT_ALIGNMENT_Z,
    CenteredClipAggregator,
    Contribution,
    MeanAggregator,
    Rejection,
    TrimmedMeanAggregator,
    aggregator_for,
)

NUMEL = 10_000
PEERS = [f"Qm{c * 44}" for c in "abcd"]


@dataclass
class Trust:
    aggregator: str
    norm_bound: float = 5.0


def honest(count: int, *, correlation: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    """Pseudo-gradients sharing a common direction: cosine between two of them is about ``correlation``."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(NUMEL, generator=generator)
    return [
        math.sqrt(correlation) * common + math.sqrt(1 - correlation) * torch.randn(NUMEL, generator=generator)
        for _ in range(count)
    ]


def contributions(tensors: list[torch.Tensor]) -> list[Contribution]:
    return [Contribution(peer, tensor) for peer, tensor in zip(PEERS, tensors, strict=False)]


def test_run_config_selects_the_rule_and_its_norm_bound() -> None:
    mean = aggregator_for(Trust("mean"))
    assert isinstance(mean, MeanAggregator) and (mean.max_norm_ratio, mean.alignment_z) == (None, None)
    clip = aggregator_for(Trust("centered_clip", norm_bound=4.0))
    assert isinstance(clip, CenteredClipAggregator) and clip.max_norm_ratio == 4.0
    assert clip.alignment_z == DEFAULT_ALIGNMENT_Z
    trimmed = aggregator_for(Trust("trimmed_mean", norm_bound=7.5))
    assert isinstance(trimmed, TrimmedMeanAggregator) and trimmed.max_norm_ratio == 7.5
    with pytest.raises(ValueError, match="choose one of"):
        aggregator_for(Trust("median"))


@pytest.mark.parametrize("correlation", [0.5, 0.1])
@pytest.mark.parametrize("attack", ["sign_flip", "noise"])
def test_alignment_catches_what_the_norm_bound_cannot(attack: str, correlation: float) -> None:
    *good, own = honest(4, correlation=correlation)  # the attacker computes its own honest update first
    generator = torch.Generator().manual_seed(9)
    noise = torch.randn(NUMEL, generator=generator)
    bad = -own if attack == "sign_flip" else noise * (own.norm() / noise.norm())
    items = contributions([*good, bad])
    for rule in (aggregator_for(Trust("centered_clip")), aggregator_for(Trust("trimmed_mean"))):
        result = rule.aggregate(items, numel=NUMEL)
        assert result.included == tuple(PEERS[:3])
        (rejection,) = result.rejections
        assert (rejection.peer_id, rejection.reason) == (PEERS[3], "misaligned")
        assert rejection.norm_ratio == pytest.approx(result.norm_ratios[PEERS[3]])
        assert 0.9 < result.norm_ratios[PEERS[3]] < 1.1  # same norm: the bound alone lets it through
    unbounded = MeanAggregator().aggregate(items, numel=NUMEL)
    assert unbounded.rejections == ()


def test_honest_peers_pass_even_when_weakly_correlated() -> None:
    for correlation in (0.05, 0.3, 0.9):
        result = aggregator_for(Trust("centered_clip")).aggregate(contributions(honest(4, correlation=correlation)), numel=NUMEL)
        assert result.rejections == () and result.included == tuple(PEERS)


def test_alignment_never_rejects_half_or_more() -> None:
    generator = torch.Generator().manual_seed(3)
    independent = [torch.randn(NUMEL, generator=generator) for _ in range(4)]  # nobody agrees with anybody
    result = aggregator_for(Trust("centered_clip")).aggregate(contributions(independent), numel=NUMEL)
    assert result.rejections == ()
    two = honest(2)
    result = aggregator_for(Trust("centered_clip")).aggregate(contributions([two[0], -two[0]]), numel=NUMEL)
    assert result.rejections == ()  # two contributors: nobody can tell who is honest


def test_nan_and_scaled_attackers_are_screened_before_alignment() -> None:
    good = honest(3)
    items = contributions([*good, torch.full((NUMEL,), math.nan)])
    result = aggregator_for(Trust("centered_clip")).aggregate(items, numel=NUMEL)
    assert result.rejections == (Rejection(PEERS[3], "non_finite"),)
    items = contributions([*good, good[0] * 100])
    result = aggregator_for(Trust("centered_clip")).aggregate(items, numel=NUMEL)
    assert [(r.peer_id, r.reason) for r in result.rejections] == [(PEERS[3], "norm_ratio")]
    assert result.rejections[0].norm_ratio == pytest.approx(100.0 * float(good[0].norm()) / sorted(
        float(t.norm()) for t in [*good, good[0] * 100])[1], rel=1e-5)

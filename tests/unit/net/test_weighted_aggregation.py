# SPDX-License-Identifier: AGPL-3.0-or-later
"""Weighted aggregation (contributions weighted by the tokens their peers trained): every rule against
results computed by hand, equal weights bitwise equal to the unweighted rule, the weight cap."""

from __future__ import annotations

import pytest
import torch

from lila_net.aggregation import (
    CenteredClipAggregator,
    Contribution,
    MeanAggregator,
    TrimmedMeanAggregator,
    get_aggregator,
)


def _contributions(rows: list[list[float]], weights: list[float]) -> list[Contribution]:
    return [Contribution(f"p{index}", torch.tensor(row), weight)
            for index, (row, weight) in enumerate(zip(rows, weights, strict=True))]


def test_weighted_mean_equals_the_hand_computed_average() -> None:
    rows = [[0.0, 4.0], [4.0, 0.0], [2.0, 2.0]]
    result = MeanAggregator().aggregate(_contributions(rows, [1.0, 3.0, 2.0]), numel=2)
    # weights over their lower median 2: 0.5, 1.5, 1 -> (0*0.5 + 4*1.5 + 2*1) / 3, (4*0.5 + 0 + 2*1) / 3
    assert result.tensor.tolist() == pytest.approx([8 / 3, 4 / 3], abs=1e-6)
    assert result.weights == (0.5, 1.5, 1.0)


def test_weighted_trimmed_mean_drops_contributions_then_weights_the_rest() -> None:
    rows = [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, -5.0]]
    weights = [1.0, 2.0, 4.0, 1.0, 1.0]
    rule = TrimmedMeanAggregator(trim=1, max_norm_ratio=None, alignment_z=None)
    result = rule.aggregate(_contributions(rows, weights), numel=2)
    # lower median weight 1. column 0 sorted: 1(w1) 2(w2) 3(w4) 4(w1) 100(w1) -> keep 2,3,4: (4+12+4)/7
    # column 1 sorted: -5(w1) 10(w1) 20(w2) 30(w4) 40(w1) -> keep 10,20,30: (10+40+120)/7
    assert result.tensor.tolist() == pytest.approx([20 / 7, 170 / 7], abs=1e-5)


def test_weighted_centered_clip_centers_on_the_weighted_mean_and_weights_its_steps() -> None:
    rows = [[0.0, 0.0], [3.0, 0.0], [0.0, 12.0]]
    weights = [1.0, 1.0, 2.0]
    # with a huge tau nothing is clipped: the weighted mean, (0 + 3 + 0)/4, (0 + 0 + 24)/4
    loose = CenteredClipAggregator(tau=1e6, max_norm_ratio=None, alignment_z=None)
    assert loose.aggregate(_contributions(rows, weights), numel=2).tensor.tolist() == pytest.approx([0.75, 6.0])
    # one iteration with tau = 1 from the center c = (0.75, 6): d_i = x_i - c, step = sum_i s_i min(1, 1/|d_i|) d_i
    # with shares s = (1/4, 1/4, 1/2)
    tight = CenteredClipAggregator(tau=1.0, iterations=1, max_norm_ratio=None, alignment_z=None)
    center = torch.tensor([0.75, 6.0])
    shares = [0.25, 0.25, 0.5]
    step = torch.zeros(2)
    for row, share in zip(rows, shares, strict=True):
        diff = torch.tensor(row) - center
        step += share * min(1.0, 1.0 / float(diff.norm())) * diff
    expected = (center + step).tolist()
    assert tight.aggregate(_contributions(rows, weights), numel=2).tensor.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", ["mean", "trimmed_mean", "centered_clip"])
def test_equal_weights_give_the_unweighted_result_bitwise(name: str) -> None:
    generator = torch.Generator().manual_seed(7)
    rows = [torch.randn(257, generator=generator) for _ in range(5)]
    rule = get_aggregator(name)
    unweighted = rule.combine([row.clone() for row in rows])
    for weight in (1.0, 4096.0):
        contributions = [Contribution(f"p{i}", row, weight) for i, row in enumerate(rows)]
        assert torch.equal(rule.aggregate(contributions, numel=257).tensor, unweighted)


def test_a_claimed_weight_is_capped_at_max_weight_ratio_median_weights() -> None:
    rows = [[0.0], [0.0], [1.0]]
    rule = MeanAggregator(max_weight_ratio=4.0)
    result = rule.aggregate(_contributions(rows, [1.0, 1.0, 10.0**9]), numel=1)
    assert result.weights == (1.0, 1.0, 4.0) and result.tensor.tolist() == pytest.approx([4 / 6])


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_a_contribution_with_an_invalid_weight_is_rejected(weight: float) -> None:
    rows = [[1.0], [1.0], [5.0]]
    result = MeanAggregator().aggregate(_contributions(rows, [1.0, 1.0, weight]), numel=1)
    assert result.included == ("p0", "p1") and [r.reason for r in result.rejections] == ["bad_weight"]
    assert result.tensor.tolist() == [1.0]


def test_the_weight_cap_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_weight_ratio must be >= 1"):
        MeanAggregator(max_weight_ratio=0.5)

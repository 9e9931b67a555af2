# SPDX-License-Identifier: AGPL-3.0-or-later
"""Aggregation rules run by a part owner on the decoded contributions to its part.

Every rule first screens the contributions: wrong shape or dtype → rejected ("shape_mismatch"); a weight
that is not a finite number > 0 → rejected ("bad_weight"); any NaN
or infinity → rejected ("non_finite"); then each finite contribution's L2 norm is divided by the group's
median norm (the lower median, so with two contributors a ×100 scale-up is caught but a scale-down is
not) and, when ``max_norm_ratio`` is set, a contribution above it is rejected ("norm_ratio"). The ratios of
all finite contributions are reported as evidence (the coordinator turns repeated rejections into
strikes and bans: ``ReportStrike``, :mod:`coordinator.core`).

With ``alignment_z`` set (the robust rules' default), contributions that do not point the way the others do
are rejected too ("misaligned"). For each survivor ``x_i`` take the cosine with the sum of the other
survivors; with ``t = alignment_z / sqrt(numel)`` (``alignment_z`` standard deviations of the cosine of a
random direction), the worst one is rejected when it is below ``t`` *and* more than ``2 t`` below the
(lower) median of the others' cosines; then the others are looked at again without it. So random noise
(cosine ≈ 0) and a sign-flipped update (negative cosine) are caught while honest DiLoCo pseudo-gradients,
which share the descent direction, pass; when the honest updates themselves hardly agree (cosines all near
zero) nothing is rejected, since nobody can tell the attacker from them. Dropping the worst first matters:
a flipped update drags every honest cosine down too, and they recover once it is gone. It never rejects
half of the survivors or more and needs at least three.

Then the rule combines the survivors, always in peer-id order, so the result does not depend on arrival
order (all in float32: float64 is slower on CPU and buys nothing for float32 pseudo-gradients):

- ``mean``: the plain average (``max_norm_ratio`` off by default: the baseline that shows the damage).
- ``trimmed_mean``: coordinate-wise, drop the ``trim`` smallest and largest values, average the rest.
- ``centered_clip``: CenteredClip (Karimireddy et al. 2021, used by BTARD): start at the mean of the
  survivors and move towards every contribution with its step clipped to radius ``tau``.

Weights: a contribution may carry a weight (the tokens its peer trained in the round: a peer twice as fast
counts twice). Weights are divided by the lower median of the survivors' weights and capped at
``max_weight_ratio`` (a peer cannot buy influence by claiming tokens it did not train); then every rule
averages with them — the mean and CenteredClip's center and steps weight each survivor, the trimmed mean
drops ``trim`` *contributions* at each end of every coordinate and weights the rest. Equal weights give
exactly (bitwise) the unweighted result. All of it is deterministic, so every part owner and every peer
checking the round's hash agree.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_NORM_RATIO = 10.0
DEFAULT_TRIM = 1
DEFAULT_CLIP_ITERATIONS = 10
DEFAULT_CLIP_TOLERANCE = 1e-6
DEFAULT_ALIGNMENT_Z = 3.0
DEFAULT_MAX_WEIGHT_RATIO = 8.0
ALIGNMENT_GAP_FACTOR = 2.0
MIN_ALIGNMENT_SURVIVORS = 3

REASON_SHAPE = "shape_mismatch"
REASON_NON_FINITE = "non_finite"
REASON_NORM = "norm_ratio"
REASON_UNDECODABLE = "undecodable"
REASON_MISALIGNED = "misaligned"
REASON_WEIGHT = "bad_weight"
REASONS = (REASON_MISALIGNED, REASON_NON_FINITE, REASON_NORM, REASON_SHAPE, REASON_UNDECODABLE, REASON_WEIGHT)
"""Every reason a contribution can be rejected for: what strike reports may name."""


class AggregationError(ValueError):
    """No contribution survived screening; the part cannot be aggregated this round."""


@dataclass(frozen=True)
class Contribution:
    peer_id: str
    tensor: torch.Tensor  # [numel] float32, decoded from the contributor's bytes
    weight: float = 1.0  # e.g. the tokens the contributor trained this round; finite and > 0


@dataclass(frozen=True)
class Rejection:
    """Evidence against one contributor for one part: why, and its norm over the group's median norm."""

    peer_id: str
    reason: str
    norm_ratio: float | None = None

    def to_json(self) -> dict[str, Any]:
        ratio = self.norm_ratio
        return {
            "peer": self.peer_id,
            "reason": self.reason,
            "norm_ratio": None if ratio is None or not math.isfinite(ratio) else ratio,
        }


@dataclass(frozen=True)
class AggregateResult:
    tensor: torch.Tensor  # [numel] float32
    included: tuple[str, ...]
    rejections: tuple[Rejection, ...]
    norm_ratios: dict[str, float] = field(default_factory=dict)
    weights: tuple[float, ...] = ()  # the weights used for ``included``, in that order (median 1)


class Aggregator(ABC):
    """Screens contributions, then combines the survivors (see the module docstring).

    ``max_norm_ratio``: reject contributions whose norm exceeds this multiple of the group's median.
    10 leaves the spread of healthy peers' pseudo-gradient norms a wide margin; too low (near 2) and honest
    peers with unlucky data get rejected, too high and a scaled-up update slips through; None disables the
    bound. ``python -m bench.robust`` reports both failure modes (attacker banned or not, honest
    contributions rejected).
    ``max_weight_ratio``: the most a contribution may weigh, in lower medians of the survivors' weights.
    It should exceed the speed spread of honest peers (a 4x faster peer needs 4); too high and a peer
    claiming tokens it did not train outweighs the others; 1 caps every weight at the median.
    ``alignment_z``: reject survivors whose cosine with the sum of the others is below
    ``alignment_z / sqrt(numel)`` (see the module docstring). 3 makes a random direction pass about once
    in 700 parts; much higher values (> ~50 on million-value parts) start rejecting honest peers late in
    training, when their updates are mostly noise; None disables the check (``python -m bench.robust``
    measures it against sign-flip and noise attacks).
    """

    name = "abstract"

    def __init__(self, *, max_norm_ratio: float | None, alignment_z: float | None = None,
                 max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO) -> None:
        if max_norm_ratio is not None and not (math.isfinite(max_norm_ratio) and max_norm_ratio > 1.0):
            raise ValueError(f"max_norm_ratio must be > 1 or None, got {max_norm_ratio!r}")
        if alignment_z is not None and not (math.isfinite(alignment_z) and alignment_z > 0):
            raise ValueError(f"alignment_z must be > 0 or None, got {alignment_z!r}")
        if not (math.isfinite(max_weight_ratio) and max_weight_ratio >= 1.0):
            raise ValueError(f"max_weight_ratio must be >= 1, got {max_weight_ratio!r}")
        self.max_norm_ratio = max_norm_ratio
        self.alignment_z = alignment_z
        self.max_weight_ratio = max_weight_ratio

    def aggregate(
        self,
        contributions: Sequence[Contribution],
        *,
        numel: int,
        prior_rejections: Sequence[Rejection] = (),
    ) -> AggregateResult:
        """Screen and combine ``contributions`` of shape ``[numel]``; raises AggregationError if none
        survive. ``prior_rejections`` (e.g. undecodable payloads) are carried into the result."""
        rejections = list(prior_rejections)
        finite: list[Contribution] = []
        norms: list[float] = []
        for item in sorted(contributions, key=lambda c: c.peer_id):
            tensor = item.tensor
            if not (
                isinstance(tensor, torch.Tensor)
                and tensor.dim() == 1
                and tensor.numel() == numel
                and tensor.dtype.is_floating_point
            ):
                rejections.append(Rejection(item.peer_id, REASON_SHAPE))
                continue
            if not (isinstance(item.weight, (int, float)) and math.isfinite(item.weight) and item.weight > 0):
                rejections.append(Rejection(item.peer_id, REASON_WEIGHT))
                continue
            # a NaN or infinity anywhere makes the norm non-finite, so the (fast, float32) norm doubles as the
            # finiteness check; a finite tensor whose norm overflows float32 is an absurd scale: norm_ratio
            norm = float(torch.linalg.vector_norm(tensor.to(torch.float32)))
            if not math.isfinite(norm):
                if bool(torch.isfinite(tensor).all()):
                    rejections.append(Rejection(item.peer_id, REASON_NORM, math.inf))
                else:
                    rejections.append(Rejection(item.peer_id, REASON_NON_FINITE))
            else:
                finite.append(item)
                norms.append(norm)
        ratios = _norm_ratios([item.peer_id for item in finite], norms)
        survivors = []
        for item in finite:
            ratio = ratios[item.peer_id]
            if self.max_norm_ratio is not None and ratio > self.max_norm_ratio:
                rejections.append(Rejection(item.peer_id, REASON_NORM, ratio))
            else:
                survivors.append(item)
        if self.alignment_z is not None:
            survivors = self._screen_alignment(survivors, numel, ratios, rejections)
        if not survivors:
            raise AggregationError(
                f"all {len(contributions)} contributions were rejected: "
                + ", ".join(f"{r.peer_id}:{r.reason}" for r in rejections)
            )
        tensors = [item.tensor.to(torch.float32) for item in survivors]  # each [numel]
        weights = self._weights([item.weight for item in survivors])
        combined = self.combine(tensors, weights).to(torch.float32)  # [numel]
        for rejection in rejections:
            logger.info(
                "rejected contribution of %s: %s (norm ratio %s)",
                rejection.peer_id,
                rejection.reason,
                rejection.norm_ratio,
            )
        return AggregateResult(
            tensor=combined,
            included=tuple(item.peer_id for item in survivors),
            rejections=tuple(rejections),
            norm_ratios=ratios,
            weights=tuple(weights),
        )

    def _weights(self, raw: Sequence[float]) -> list[float]:
        """``raw`` over their lower median, capped at ``max_weight_ratio`` (equal weights: all exactly 1)."""
        median = sorted(raw)[(len(raw) - 1) // 2]
        return [min(weight / median, self.max_weight_ratio) for weight in raw]

    def _screen_alignment(
        self,
        survivors: list[Contribution],
        numel: int,
        ratios: dict[str, float],
        rejections: list[Rejection],
    ) -> list[Contribution]:
        """Greedy: drop the worst-aligned contribution while it is below the threshold, then look again
        without it (an attacker drags the others' cosines down; once it is gone they recover)."""
        if len(survivors) < MIN_ALIGNMENT_SURVIVORS:
            return survivors
        assert self.alignment_z is not None
        threshold = self.alignment_z / math.sqrt(numel)
        if threshold >= 1.0:  # too few values to tell alignment from chance
            return survivors
        remaining = [(item, item.tensor.to(torch.float32)) for item in survivors]  # tensors [numel]
        dropped: list[str] = []
        while len(remaining) >= MIN_ALIGNMENT_SURVIVORS and 2 * (len(dropped) + 1) < len(survivors):
            cosines = _cosines_with_the_others([tensor for _, tensor in remaining])
            worst = min(range(len(remaining)), key=lambda index: cosines[index])
            others = sorted(cosine for index, cosine in enumerate(cosines) if index != worst)
            typical = others[(len(others) - 1) // 2]  # lower median of the others' cosines
            if cosines[worst] >= threshold or typical - cosines[worst] <= ALIGNMENT_GAP_FACTOR * threshold:
                break  # aligned enough, or no worse than the rest: nobody can tell it from honest
            logger.info(
                "alignment screening: %s has cosine %.4f with the others (threshold %.4f)",
                remaining[worst][0].peer_id,
                cosines[worst],
                threshold,
            )
            dropped.append(remaining.pop(worst)[0].peer_id)
        rejections.extend(Rejection(peer, REASON_MISALIGNED, ratios.get(peer)) for peer in dropped)
        return [item for item, _ in remaining]

    @abstractmethod
    def combine(self, tensors: list[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
        """Combine the survivors (each [numel] float32, in peer-id order) into one [numel] tensor;
        ``weights`` (one per tensor, > 0; None or all equal: unweighted) weight them."""


def _norm_ratios(peers: Sequence[str], norms: Sequence[float]) -> dict[str, float]:
    """Each norm over the lower median of all norms."""
    if not norms:
        return {}
    median = sorted(norms)[(len(norms) - 1) // 2]  # lower median
    ratios = {}
    for peer, norm in zip(peers, norms, strict=True):
        if median > 0:
            ratios[peer] = norm / median
        else:
            ratios[peer] = 1.0 if norm == 0 else math.inf
    return ratios


class MeanAggregator(Aggregator):
    name = "mean"

    def __init__(self, *, max_norm_ratio: float | None = None, alignment_z: float | None = None,
                 max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO) -> None:
        super().__init__(max_norm_ratio=max_norm_ratio, alignment_z=alignment_z, max_weight_ratio=max_weight_ratio)

    def combine(self, tensors: list[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
        return exact_mean(tensors, weights)


class TrimmedMeanAggregator(Aggregator):
    """Coordinate-wise trimmed mean.

    ``trim``: values dropped at each end of every coordinate. It must be at least the number of attackers
    you want to survive; groups with ``n <= 2 * trim`` survivors fall back to the plain mean (logged),
    because nothing would be left.
    """

    name = "trimmed_mean"

    def __init__(
        self,
        *,
        trim: int = DEFAULT_TRIM,
        max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO,
        alignment_z: float | None = DEFAULT_ALIGNMENT_Z,
        max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        super().__init__(max_norm_ratio=max_norm_ratio, alignment_z=alignment_z, max_weight_ratio=max_weight_ratio)
        if not isinstance(trim, int) or trim < 0:
            raise ValueError(f"trim must be an int >= 0, got {trim!r}")
        self.trim = trim

    def combine(self, tensors: list[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
        count = len(tensors)
        if count <= 2 * self.trim:
            logger.info(
                "trimmed_mean: %d contributions cannot lose %d at each end; using the mean", count, self.trim
            )
            return exact_mean(tensors, weights)
        ordered, order = torch.sort(torch.stack(tensors), dim=0, stable=True)  # [n, numel] each column sorted
        kept = slice(self.trim, count - self.trim)
        if _unweighted(weights):
            return ordered[kept].mean(dim=0)  # [numel]
        per_value = torch.tensor(weights, dtype=torch.float32)[order][kept]  # [n - 2 trim, numel]
        return (ordered[kept] * per_value).sum(dim=0) / per_value.sum(dim=0)  # [numel]


class CenteredClipAggregator(Aggregator):
    """CenteredClip: ``v ← v + mean_i clip(x_i − v, tau)``, iterated from the mean of the survivors.

    The start is the mean, not the coordinate-wise median: a median over [n, numel] sorts every coordinate
    and costs far more than the mean, and the norm screening already bounds how far one contribution can
    drag the mean; the clipped iterations then move towards the majority. ``tau``: clipping radius in L2.
    None takes, at every iteration, the median distance of the contributions to the current center, which
    scales with the pseudo-gradients and shrinks as the center leaves an outlier behind; a fixed tau far
    below that turns the rule into a slow geometric median, far above it into the plain mean.
    ``iterations`` (10) and ``tolerance`` (relative change that stops early) rarely need changing.
    """

    name = "centered_clip"

    def __init__(
        self,
        *,
        tau: float | None = None,
        iterations: int = DEFAULT_CLIP_ITERATIONS,
        tolerance: float = DEFAULT_CLIP_TOLERANCE,
        max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO,
        alignment_z: float | None = DEFAULT_ALIGNMENT_Z,
        max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        super().__init__(max_norm_ratio=max_norm_ratio, alignment_z=alignment_z, max_weight_ratio=max_weight_ratio)
        if tau is not None and not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be positive or None, got {tau!r}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        self.tau = tau
        self.iterations = iterations
        self.tolerance = tolerance

    def combine(self, tensors: list[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
        stacked = torch.stack(tensors)  # [n, numel]
        count = stacked.shape[0]
        center = exact_mean(tensors, weights)  # [numel]
        shares = None if _unweighted(weights) else torch.tensor(weights, dtype=torch.float32) / sum(weights)  # [n]
        for iteration in range(self.iterations):
            diffs = stacked - center  # [n, numel]
            norms = torch.linalg.vector_norm(diffs, dim=1)  # [n]
            tau = self.tau if self.tau is not None else float(norms.median())
            if tau == 0.0:
                return center
            clipped = torch.clamp(tau / norms.clamp_min(torch.finfo(torch.float32).tiny), max=1.0)  # [n]
            step = (clipped / count if shares is None else clipped * shares) @ diffs  # [numel]
            center = center + step
            moved = float(torch.linalg.vector_norm(step))
            if moved <= self.tolerance * max(float(torch.linalg.vector_norm(center)), 1.0):
                logger.debug("centered_clip converged after %d iterations", iteration + 1)
                break
        return center


def _cosines_with_the_others(tensors: list[torch.Tensor]) -> list[float]:
    """For each tensor (each [numel]), its cosine with the sum of all the others."""
    total = exact_mean(tensors) * len(tensors)  # [numel]
    cosines = []
    for tensor in tensors:
        others = total - tensor  # [numel]
        denominator = float(torch.linalg.vector_norm(tensor)) * float(torch.linalg.vector_norm(others))
        cosines.append(float(torch.dot(tensor, others)) / denominator if denominator > 0 else 0.0)
    return cosines


def exact_mean(tensors: list[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """float32 (weighted) mean summed in the given order (deterministic; no [n, numel] stack, one extra
    vector). ``weights`` None or all equal: the plain mean, bitwise.

    float32 rather than float64: float64 arithmetic is slower on CPU and the pseudo-gradients
    are float32 anyway (the error is a few ulp for groups of tens of peers).
    """
    if _unweighted(weights):
        total = tensors[0].clone()  # [numel]
        for tensor in tensors[1:]:
            total.add_(tensor)
        return total.div_(len(tensors))
    assert weights is not None and len(weights) == len(tensors)
    total = tensors[0] * weights[0]  # [numel]
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        total.add_(tensor, alpha=weight)
    return total.div_(math.fsum(weights))


def _unweighted(weights: Sequence[float] | None) -> bool:
    return weights is None or all(weight == weights[0] for weight in weights)


AGGREGATORS: dict[str, type[Aggregator]] = {
    MeanAggregator.name: MeanAggregator,
    TrimmedMeanAggregator.name: TrimmedMeanAggregator,
    CenteredClipAggregator.name: CenteredClipAggregator,
}


def get_aggregator(name: str, **options: Any) -> Aggregator:
    """Build the aggregator ``name`` (``mean``, ``trimmed_mean``, ``centered_clip``) with its options."""
    try:
        cls = AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}") from None
    return cls(**options)


def aggregator_for(trust: Any) -> Aggregator:
    """The aggregator a run config's ``[trust]`` section asks for (any object with ``aggregator`` and
    ``norm_bound``): the robust rules bound norms at ``norm_bound`` times the median and screen alignment;
    ``mean`` stays the plain average (non-finite and shape screening only), the baseline."""
    if trust.aggregator == MeanAggregator.name:
        return MeanAggregator()
    return get_aggregator(trust.aggregator, max_norm_ratio=float(trust.norm_bound))

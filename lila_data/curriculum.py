# SPDX-License-Identifier: AGPL-3.0-or-later
"""The curriculum: stages of training and the learning-rate schedule, as pure functions of progress.

A curriculum is a sequence of stages, each with a token budget, a sequence length, an optional document
filter and mixture weights over named sources (the names of ``[data.sources]`` in the run config). The
network's global token count (tokens trained by all peers together) decides the current stage: stage
``i`` covers ``[sum(tokens[:i]), sum(tokens[:i+1]))``; at the exact boundary the next stage begins.

The learning rate follows warmup–stable–decay keyed by the same global token count over the whole
curriculum: linear warmup from 0 to ``peak_lr`` over ``warmup_tokens``, constant, then a cosine (or
linear) decay to ``min_lr_ratio · peak_lr`` over the last ``decay_tokens``; after the curriculum the
rate stays at that floor and ``finished`` is true.

Nothing here does I/O: the coordinator evaluates :func:`curriculum_at` and :func:`next_source` on its
ledger's counts and hands peers shards and learning rates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lila_data.errors import DataError
from lila_data.filters import parse_filter
from lila_model.growth import GrowthSpec

DEFAULT_MIXTURE_NAME = "default"
DECAY_SHAPES = ("cosine", "linear")
_STAGE_KEYS = ("name", "tokens", "seq_len", "filter", "mixture", "growth")
GROWTH_KEYS = tuple(f.name for f in dataclasses.fields(GrowthSpec))  # a stage's ``growth`` table
_SCHEDULE_KEYS = ("peak_lr", "warmup_tokens", "decay_tokens", "min_lr_ratio", "decay")
_CURRICULUM_KEYS = ("stages", "schedule")


def _default_mixture() -> dict[str, float]:
    return {DEFAULT_MIXTURE_NAME: 1.0}


def _check_int(where: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{where}={value!r}: must be an integer >= {minimum}")


@dataclass(frozen=True)
class StageConfig:
    """One curriculum stage.

    ``tokens``: this stage's share of the global token budget. ``seq_len``: tokens per training
    sequence (longer contexts late in training are the usual pattern). ``filter``: a document filter such
    as ``int_score >= 4`` (see :mod:`lila_data.filters`), or None for all documents. ``mixture``:
    relative weights over source names; they need not sum to 1, a weight of 0 excludes a source.
    ``growth``: grow the model when this stage begins (:class:`lila_model.growth.GrowthSpec`: an
    ``operator`` — ``zero``/``stack`` for depth, ``widen`` for width — with a ``factor`` or a ``target``
    preset, and ``zero``'s ``placement``); in TOML ``growth = { operator = "zero", factor = 2 }``. None
    (the default) keeps the model. When to grow: see docs/decisions/0008-model-growth.md.
    """

    name: str
    tokens: int
    seq_len: int
    filter: str | None = None
    mixture: dict[str, float] = field(default_factory=_default_mixture)
    growth: GrowthSpec | None = None

    def validate(self, where: str = "stage") -> None:
        """Raise :class:`DataError` naming the bad field and the fix."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise DataError(f"{where}.name={self.name!r}: give the stage a non-empty name")
        _check_int(f"{where}.tokens", self.tokens, 1)
        _check_int(f"{where}.seq_len", self.seq_len, 1)
        if self.filter is not None:
            try:
                parse_filter(self.filter)
            except DataError as exc:
                raise DataError(f"{where}.filter: {exc}") from exc
        if not isinstance(self.mixture, Mapping) or not self.mixture:
            raise DataError(
                f"{where}.mixture={self.mixture!r}: name at least one source, e.g. {{ fineweb = 1.0 }}"
            )
        for source, weight in self.mixture.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not weight >= 0
                or math.isinf(weight)
            ):
                raise DataError(
                    f"{where}.mixture[{source!r}]={weight!r}: weights must be finite numbers >= 0"
                )
        if sum(self.mixture.values()) <= 0:
            raise DataError(f"{where}.mixture: all weights are 0; give at least one source a positive weight")
        if self.growth is not None and not isinstance(self.growth, GrowthSpec):
            raise DataError(f"{where}.growth is a {type(self.growth).__name__}, not a lila_model.growth.GrowthSpec")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for TOML (``filter`` and ``growth`` omitted when None)."""
        out: dict[str, Any] = {"name": self.name, "tokens": self.tokens, "seq_len": self.seq_len}
        if self.filter is not None:
            out["filter"] = self.filter
        out["mixture"] = dict(self.mixture)
        if self.growth is not None:
            out["growth"] = {k: v for k, v in dataclasses.asdict(self.growth).items() if v is not None}
        return out


@dataclass(frozen=True)
class ScheduleConfig:
    """Warmup–stable–decay learning rate keyed by global tokens.

    ``peak_lr``: the stable rate (small models 1e-3–3e-3, 1B models ~3e-4; too high diverges early).
    ``warmup_tokens``: linear ramp from 0 (about 1–5% of the budget; 0 disables warmup).
    ``decay_tokens``: length of the final decay (10–20% of the budget is typical for WSD).
    ``min_lr_ratio``: the floor as a fraction of ``peak_lr``. ``decay``: "cosine" or "linear".
    """

    peak_lr: float
    warmup_tokens: int
    decay_tokens: int
    min_lr_ratio: float = 0.1
    decay: str = "cosine"

    def validate(self, where: str = "schedule") -> None:
        """Raise :class:`DataError` naming the bad field and the fix."""
        if (
            isinstance(self.peak_lr, bool)
            or not isinstance(self.peak_lr, (int, float))
            or not self.peak_lr > 0
        ):
            raise DataError(f"{where}.peak_lr={self.peak_lr!r}: must be a number > 0, e.g. 3e-3")
        _check_int(f"{where}.warmup_tokens", self.warmup_tokens, 0)
        _check_int(f"{where}.decay_tokens", self.decay_tokens, 0)
        if not isinstance(self.min_lr_ratio, (int, float)) or not 0 <= self.min_lr_ratio <= 1:
            raise DataError(f"{where}.min_lr_ratio={self.min_lr_ratio!r}: must be in [0, 1], e.g. 0.1")
        if self.decay not in DECAY_SHAPES:
            raise DataError(f"{where}.decay={self.decay!r}: choose one of {', '.join(DECAY_SHAPES)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "warmup_tokens": self.warmup_tokens,
            "decay_tokens": self.decay_tokens,
            "min_lr_ratio": self.min_lr_ratio,
            "decay": self.decay,
        }


@dataclass(frozen=True)
class CurriculumConfig:
    """Stages in order plus the schedule; validated on construction."""

    stages: tuple[StageConfig, ...]
    schedule: ScheduleConfig

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        self.validate()

    @property
    def total_tokens(self) -> int:
        """Global token budget of the whole curriculum."""
        return sum(stage.tokens for stage in self.stages)

    @property
    def max_seq_len(self) -> int:
        """The longest sequence of any stage (what a peer plans its memory and evaluates with)."""
        return max(stage.seq_len for stage in self.stages)

    def validate(self) -> None:
        """Raise :class:`DataError` naming the bad field and the fix."""
        if not self.stages:
            raise DataError("curriculum.stages is empty: declare at least one [[curriculum.stages]]")
        names: set[str] = set()
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, StageConfig):
                raise DataError(f"curriculum.stages[{index}] is a {type(stage).__name__}, not a StageConfig")
            stage.validate(f"curriculum.stages[{index}]")
            if index == 0 and stage.growth is not None:
                raise DataError("curriculum.stages[0].growth: the first stage trains the [model] preset; name the "
                                "starting size there and give growth to a later stage")
            if stage.name in names:
                raise DataError(
                    f"curriculum.stages[{index}].name={stage.name!r} repeats; give each stage its own name"
                )
            names.add(stage.name)
        self.schedule.validate("curriculum.schedule")
        ramps = self.schedule.warmup_tokens + self.schedule.decay_tokens
        if ramps > self.total_tokens:
            raise DataError(
                f"curriculum.schedule: warmup_tokens + decay_tokens = {ramps} exceeds the curriculum's "
                f"{self.total_tokens} tokens; shorten them or add tokens to the stages"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CurriculumConfig:
        """Build from parsed TOML: ``{"stages": [{...}, ...], "schedule": {...}}``."""
        _check_keys("curriculum", raw, _CURRICULUM_KEYS)
        if "stages" not in raw or "schedule" not in raw:
            raise DataError("curriculum needs both [[curriculum.stages]] and [curriculum.schedule]")
        stages_raw = raw["stages"]
        if not isinstance(stages_raw, (list, tuple)):
            raise DataError("curriculum.stages must be an array of tables ([[curriculum.stages]])")
        stages = []
        for index, stage in enumerate(stages_raw):
            where = f"curriculum.stages[{index}]"
            _check_keys(where, stage, _STAGE_KEYS)
            missing = [k for k in ("name", "tokens", "seq_len") if k not in stage]
            if missing:
                raise DataError(
                    f"{where} lacks {', '.join(missing)}; every stage needs name, tokens and seq_len"
                )
            values = dict(stage)
            if "mixture" in values and isinstance(values["mixture"], Mapping):
                values["mixture"] = dict(values["mixture"])
            if "growth" in values:
                values["growth"] = _growth_from_dict(f"{where}.growth", values["growth"])
            stages.append(StageConfig(**values))
        schedule_raw = raw["schedule"]
        _check_keys("curriculum.schedule", schedule_raw, _SCHEDULE_KEYS)
        missing = [k for k in ("peak_lr", "warmup_tokens", "decay_tokens") if k not in schedule_raw]
        if missing:
            raise DataError(f"curriculum.schedule lacks {', '.join(missing)}")
        return cls(stages=tuple(stages), schedule=ScheduleConfig(**schedule_raw))

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back to an equal config."""
        return {"stages": [s.to_dict() for s in self.stages], "schedule": self.schedule.to_dict()}


def _growth_from_dict(where: str, raw: Any) -> GrowthSpec:
    """A stage's ``growth`` table as a :class:`GrowthSpec` (its own checks, reported under ``where``)."""
    _check_keys(where, raw, GROWTH_KEYS)
    if "operator" not in raw:
        raise DataError(f"{where} lacks operator; e.g. growth = {{ operator = \"zero\", factor = 2 }}")
    try:
        return GrowthSpec(**raw)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc


def _check_keys(where: str, raw: Any, known: tuple[str, ...]) -> None:
    if not isinstance(raw, Mapping):
        raise DataError(f"{where} must be a table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise DataError(f"{where} has unknown key(s) {unknown}; known keys: {', '.join(known)}")


@dataclass(frozen=True)
class CurriculumPoint:
    """Where global progress stands: the stage, how far into it, and the learning rate."""

    stage_index: int
    stage: StageConfig
    tokens_into_stage: int
    lr: float
    lr_scale: float
    finished: bool


def lr_scale_at(schedule: ScheduleConfig, total_tokens: int, global_tokens: int) -> float:
    """The multiplier of ``peak_lr`` at ``global_tokens`` of a ``total_tokens`` curriculum."""
    floor = schedule.min_lr_ratio
    if global_tokens >= total_tokens:
        return floor
    if global_tokens < schedule.warmup_tokens:
        return global_tokens / schedule.warmup_tokens
    decay_start = total_tokens - schedule.decay_tokens
    if global_tokens < decay_start:
        return 1.0
    progress = (global_tokens - decay_start) / schedule.decay_tokens  # in [0, 1)
    if schedule.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def curriculum_at(curriculum: CurriculumConfig, global_tokens: int) -> CurriculumPoint:
    """The stage and learning rate at ``global_tokens`` trained by the whole network.

    Past the end, the last stage is reported with ``tokens_into_stage`` = its budget, the floor rate
    and ``finished=True``.
    """
    if isinstance(global_tokens, bool) or not isinstance(global_tokens, int) or global_tokens < 0:
        raise DataError(f"global_tokens={global_tokens!r}: must be an integer >= 0")
    scale = lr_scale_at(curriculum.schedule, curriculum.total_tokens, global_tokens)
    lr = curriculum.schedule.peak_lr * scale
    start = 0
    for index, stage in enumerate(curriculum.stages):
        if global_tokens < start + stage.tokens:
            return CurriculumPoint(index, stage, global_tokens - start, lr, scale, False)
        start += stage.tokens
    last = len(curriculum.stages) - 1
    return CurriculumPoint(last, curriculum.stages[last], curriculum.stages[last].tokens, lr, scale, True)


def next_source(mixture: Mapping[str, float], taken: Mapping[str, int]) -> str:
    """Which source the next shard of a stage should come from.

    ``mixture``: the stage's weights; ``taken``: tokens already trained per source in this stage
    (missing names count 0). The choice is the source furthest below its share, i.e. the largest
    ``weight/Σweights · Σtaken − taken[source]``; ties go to the larger weight, then the name that sorts
    first. Sources with weight 0 are never chosen. Over many shards the token shares converge to the
    weights, whatever the shard sizes.
    """
    active = {name: float(w) for name, w in mixture.items() if w > 0}
    if not active:
        raise DataError(f"mixture {dict(mixture)!r} has no positive weight; give a source a weight > 0")
    unknown = sorted(set(taken) - set(mixture))
    if unknown:
        raise DataError(f"taken names source(s) {unknown} that the mixture {sorted(mixture)} lacks")
    weight_sum = sum(active.values())
    total = sum(int(taken.get(name, 0)) for name in active)

    def rank(name: str) -> tuple[float, float, str]:
        deficit = active[name] / weight_sum * total - int(taken.get(name, 0))
        return (-deficit, -active[name], name)

    return min(active, key=rank)

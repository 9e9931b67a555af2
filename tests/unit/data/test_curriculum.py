# SPDX-License-Identifier: AGPL-3.0-or-later
"""Curriculum stages, the warmup–stable–decay schedule, and the mixture helper (pure functions)."""

from __future__ import annotations

import itertools
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

from lila_data import CurriculumConfig, DataError, ScheduleConfig, StageConfig, curriculum_at, next_source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PEAK = 2e-3


def _curriculum(decay: str = "cosine") -> CurriculumConfig:
    return CurriculumConfig(
        stages=(
            StageConfig("general", tokens=100, seq_len=128),
            StageConfig(
                "edu", tokens=200, seq_len=256, filter="int_score >= 4", mixture={"a": 3.0, "b": 1.0}
            ),
            StageConfig("long", tokens=50, seq_len=1024),
        ),
        schedule=ScheduleConfig(
            peak_lr=PEAK, warmup_tokens=10, decay_tokens=50, min_lr_ratio=0.1, decay=decay
        ),
    )


@pytest.mark.parametrize(
    ("tokens", "stage", "into", "finished"),
    [
        (0, 0, 0, False),
        (99, 0, 99, False),
        (100, 1, 0, False),
        (101, 1, 1, False),
        (299, 1, 199, False),
        (300, 2, 0, False),
        (349, 2, 49, False),
        (350, 2, 50, True),
        (10_000, 2, 50, True),
    ],
)
def test_stage_boundaries(tokens: int, stage: int, into: int, finished: bool) -> None:
    point = curriculum_at(_curriculum(), tokens)
    assert (point.stage_index, point.tokens_into_stage, point.finished) == (stage, into, finished)
    assert point.stage == _curriculum().stages[stage]


@pytest.mark.parametrize(
    ("tokens", "cosine", "linear"),
    [
        (0, 0.0, 0.0),
        (5, 0.5, 0.5),
        (10, 1.0, 1.0),
        (299, 1.0, 1.0),
        (300, 1.0, 1.0),  # decay starts at total - decay_tokens = 300
        (310, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)), 1 - 0.9 * 0.2),
        (325, 0.55, 0.55),
        (340, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.8)), 1 - 0.9 * 0.8),
        (350, 0.1, 0.1),
        (999, 0.1, 0.1),
    ],
)
def test_warmup_stable_decay(tokens: int, cosine: float, linear: float) -> None:
    for shape, expected in (("cosine", cosine), ("linear", linear)):
        point = curriculum_at(_curriculum(shape), tokens)
        assert point.lr_scale == pytest.approx(expected, abs=1e-12)
        assert point.lr == pytest.approx(PEAK * expected, abs=1e-15)


def test_lr_is_continuous_and_monotone_after_warmup() -> None:
    scales = [curriculum_at(_curriculum(), t).lr_scale for t in range(0, 360)]
    assert all(b >= a for a, b in itertools.pairwise(scales[:11]))
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(scales[10:]))
    assert max(abs(b - a) for a, b in itertools.pairwise(scales)) <= 0.1 + 1e-12


def test_round_trip_and_the_shipped_toml_shape(tmp_path: Path) -> None:
    config = _curriculum("linear")
    assert CurriculumConfig.from_dict(config.to_dict()) == config
    raw = tomllib.loads(
        """
        [[stages]]
        name = "general"
        tokens = 40_000
        seq_len = 128
        mixture = { fineweb = 1.0 }
        [[stages]]
        name = "educational"
        tokens = 40_000
        seq_len = 256
        filter = "int_score >= 4"
        mixture = { fineweb = 1 }
        [schedule]
        peak_lr = 3e-3
        warmup_tokens = 4_000
        decay_tokens = 30_000
        """
    )
    loaded = CurriculumConfig.from_dict(raw)
    assert loaded.total_tokens == 80_000 and loaded.stages[1].filter == "int_score >= 4"
    assert loaded.schedule.min_lr_ratio == 0.1 and loaded.schedule.decay == "cosine"
    assert curriculum_at(loaded, 40_000).stage.name == "educational"


def _with(stage: dict | None = None, schedule: dict | None = None) -> dict:
    base = _curriculum().to_dict()
    base["stages"][1].update(stage or {})
    base["schedule"].update(schedule or {})
    return base


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with(stage={"tokens": 0}), r"curriculum.stages\[1\].tokens=0: must be an integer >= 1"),
        (_with(stage={"seq_len": "long"}), r"curriculum.stages\[1\].seq_len='long'"),
        (_with(stage={"filter": "int_score => 4"}), r"curriculum.stages\[1\].filter"),
        (_with(stage={"mixture": {"a": -1.0}}), r"mixture\['a'\]=-1.0: weights must be finite"),
        (_with(stage={"mixture": {"a": 0.0}}), "all weights are 0"),
        (_with(stage={"name": "general"}), "repeats"),
        (_with(stage={"colour": "red"}), r"unknown key\(s\) \['colour'\]"),
        (_with(schedule={"peak_lr": 0}), "peak_lr=0: must be a number > 0"),
        (_with(schedule={"min_lr_ratio": 1.5}), r"min_lr_ratio=1.5: must be in \[0, 1\]"),
        (_with(schedule={"decay": "step"}), "choose one of cosine, linear"),
        (_with(schedule={"decay_tokens": 345}), "exceeds the curriculum's 350 tokens"),
        ({"stages": [], "schedule": _curriculum().schedule.to_dict()}, "stages is empty"),
        ({"stages": [{"name": "x"}], "schedule": {}}, "lacks tokens, seq_len"),
    ],
)
def test_validation_names_the_field_and_the_fix(raw: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        CurriculumConfig.from_dict(raw)


def test_bad_progress_values() -> None:
    with pytest.raises(DataError, match="global_tokens=-1"):
        curriculum_at(_curriculum(), -1)


def test_next_source_follows_the_weights_over_uneven_shards() -> None:
    mixture = {"web": 3.0, "code": 1.0, "off": 0.0}
    shard_tokens = {"web": 700, "code": 1900}
    taken: Counter[str] = Counter()
    picks = []
    for _ in range(400):
        name = next_source(mixture, taken)
        picks.append(name)
        taken[name] += shard_tokens[name]
    assert "off" not in picks
    share = taken["web"] / (taken["web"] + taken["code"])
    assert abs(share - 0.75) < 0.01


def test_next_source_ties_and_errors() -> None:
    assert next_source({"b": 1.0, "a": 1.0}, {}) == "a"  # equal weights: name order
    assert next_source({"b": 2.0, "a": 1.0}, {}) == "b"  # larger weight first
    assert next_source({"a": 1.0, "b": 1.0}, {"a": 10}) == "b"  # largest deficit
    assert next_source({"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}) == "a"
    with pytest.raises(DataError, match="no positive weight"):
        next_source({"a": 0.0}, {})
    with pytest.raises(DataError, match=r"source\(s\) \['z'\]"):
        next_source({"a": 1.0}, {"z": 5})

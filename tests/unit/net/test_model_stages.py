# SPDX-License-Identifier: AGPL-3.0-or-later
"""Staged runs: a curriculum stage's ``growth`` table, checked on load against the shape before it, the model
stages every peer and the coordinator derive from it, and the shipped staged run (runs/lila-1b.toml)."""

from __future__ import annotations

import pytest

from lila_model.growth import GrowthSpec
from lila_net.config import ConfigError, load_run_config, loads_run_config, model_stages, stage_at_step
from lila_run.harness import small_run
from tests.helpers.paths import REPO

SMALL = {"name": "small", "tokens": 1000, "seq_len": 16}


def _run(*growths, **options):
    stages = [SMALL] + [{"name": f"grown-{i}", "tokens": 1000, "seq_len": 16, "growth": g}
                        for i, g in enumerate(growths)]
    return small_run(name="staged", model={"preset": "debug"}, stages=stages, **options)


def test_stages_grow_in_order_and_survive_the_toml_round_trip() -> None:
    run = _run({"operator": "zero", "factor": 2}, {"operator": "widen", "factor": 2})
    assert run.curriculum.stages[1].growth == GrowthSpec(operator="zero", factor=2)
    shapes = [(s.index, s.curriculum_stage, s.config.n_layers, s.config.d_model) for s in model_stages(run)]
    assert shapes == [(0, 0, 4, 144), (1, 1, 8, 144), (2, 2, 8, 288)]
    assert loads_run_config(run.to_toml()) == run


@pytest.mark.parametrize(("growth", "message"), [
    ({"operator": "grow"}, "GrowthSpec.operator='grow' is unknown"),
    ({"factor": 2}, "lacks operator"),
    ({"operator": "zero", "factr": 2}, "unknown key(s) ['factr']"),
    ({"operator": "zero", "factor": 2, "target": "lila-20m"}, "exactly one of factor="),
    ({"operator": "widen", "target": "lila-20m"}, "curriculum stage 'grown-0' (stages[1]).growth: width factor 384/144"),
])
def test_a_bad_growth_names_the_stage_and_the_fix(growth, message) -> None:
    with pytest.raises(ConfigError) as caught:
        _run(growth)
    assert message in str(caught.value)


def test_the_first_stage_and_overlapped_rounds_cannot_grow() -> None:
    with pytest.raises(ConfigError, match=r"stages\[0\]\.growth: the first stage trains the \[model\] preset"):
        small_run(name="staged", stages=[{**SMALL, "growth": {"operator": "zero", "factor": 2}}])
    with pytest.raises(ConfigError, match=r"diloco\.overlap = true with a curriculum growth"):
        _run({"operator": "zero", "factor": 2}, diloco={"overlap": True})


def test_the_model_stage_of_an_outer_step() -> None:
    assert [stage_at_step((), 9), stage_at_step((3,), 2), stage_at_step((3,), 3), stage_at_step((3, 3), 3),
            stage_at_step((3, 7), 5), stage_at_step((3, 7), 7)] == [0, 0, 1, 2, 1, 2]


def test_the_shipped_lila_1b_run_grows_from_about_20m_to_about_1b() -> None:
    run = load_run_config(REPO / "runs" / "lila-1b.toml")
    stages = model_stages(run)
    params = [s.num_params() for s in stages]
    assert [(s.config.n_layers, s.config.d_model, s.config.n_heads) for s in stages] == [
        (12, 384, 8), (36, 384, 8), (36, 768, 16), (36, 1536, 32)]
    assert params[0] < 30_000_000 and 0.9e9 < params[-1] < 1.2e9, params
    assert [stages[i].growth.operator for i in range(1, 4)] == ["zero", "widen", "widen"]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Run config -> data plan, and settings from every shipped run config."""

from __future__ import annotations

import pytest

from coordinator.plan import RunPlan, ShardSpec, StagePlan, synthetic_plan
from coordinator.planning import interleave, plan_from_config
from coordinator.settings import ServerSettings
from lila_data.shards import ShardAddress
from lila_net.config import load_run_config
from tests.helpers.paths import RUNS


def _shards(source: str, sizes: list[int]) -> list[ShardAddress]:
    out, row = [], 0
    for n in sizes:
        out.append(ShardAddress(source, "f", row, row + n))
        row += n
    return out


def test_interleave_follows_document_shares_until_sources_run_out():
    shards = {"a": _shards("a", [10] * 4), "b": _shards("b", [10] * 2), "zero": _shards("zero", [10])}
    order = interleave({"a": 2.0, "b": 1.0, "zero": 0.0}, shards)
    assert [s.source for s in order] == ["a", "b", "a", "a", "b", "a"]
    assert sorted(order, key=lambda s: (s.source, s.row_start)) == sorted(
        shards["a"] + shards["b"], key=lambda s: (s.source, s.row_start)
    )


def test_cpu_demo_plan_has_every_shard_in_every_stage():
    config = load_run_config(RUNS / "cpu-demo.toml")
    plan = plan_from_config(config)
    assert [s.name for s in plan.stages] == [s.name for s in config.curriculum.stages]
    docs = 150  # the bundled sample
    per_shard = config.data.docs_per_shard
    for stage, stage_config in zip(plan.stages, config.curriculum.stages, strict=True):
        assert len(stage.shards) == -(-docs // per_shard)
        assert sum(s.num_docs for s in stage.shards) == docs
        assert (stage.token_budget, stage.seq_len, stage.doc_filter) == (
            stage_config.tokens,
            stage_config.seq_len,
            stage_config.filter,
        )
        assert all(s.source == "bundled:fineweb-edu-sample" for s in stage.shards)
    assert plan_from_config(config).fingerprint() == plan.fingerprint()


@pytest.mark.parametrize("path", sorted(RUNS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_gives_valid_server_settings(path):
    config = load_run_config(path)
    settings = ServerSettings.from_run_config(config)
    assert (settings.coordinator, settings.trust) == (config.coordinator, config.trust)
    core = settings.core_config()
    assert core.retry_after_s == config.coordinator.heartbeat_interval_s
    assert (core.lease_timeout_s, core.max_leases_per_peer) == (config.coordinator.lease_timeout_s,
                                                              config.coordinator.max_leases_per_peer)
    assert (core.strikes_to_ban, core.strike_witnesses, core.strike_memory_rounds) == (
        config.trust.strikes_to_ban, config.trust.strike_witnesses, config.trust.strike_memory_rounds)


def test_server_settings_overrides_reach_the_section_that_holds_them():
    settings = ServerSettings.of(lease_timeout_s=60.0, strikes_to_ban=2, dht_auth=None)
    assert (settings.coordinator.lease_timeout_s, settings.trust.strikes_to_ban) == (60.0, 2)
    assert settings.coordinator.dht_auth is True  # None leaves a setting as it is
    with pytest.raises(TypeError, match="'colour' is not a"):
        ServerSettings.of(colour="red")
    with pytest.raises(ValueError, match="under 3 heartbeat intervals"):
        ServerSettings.of(lease_timeout_s=1.0)


def test_plan_values_are_checked():
    with pytest.raises(ValueError, match="no shards"):
        StagePlan("empty", ())
    with pytest.raises(ValueError, match="twice"):
        StagePlan("dup", (ShardSpec("x", "s", "f", 0, 1), ShardSpec("x", "s", "f", 1, 2)))
    with pytest.raises(ValueError, match="at least one document"):
        ShardSpec("x", "s", "f", 3, 3)
    with pytest.raises(ValueError, match="at least one curriculum stage"):
        RunPlan.from_stages([])
    plan = synthetic_plan([[1, 2]])
    assert plan.shard((0, plan.stages[0].shards[1].shard_id)).num_docs == 2
    assert plan.shard((1, "x")) is None and plan.shard((0, "nope")) is None
    assert synthetic_plan([[1, 2]], budgets=[10]).fingerprint() == plan.fingerprint()  # budgets may change
    assert synthetic_plan([[1, 3]]).fingerprint() != plan.fingerprint()

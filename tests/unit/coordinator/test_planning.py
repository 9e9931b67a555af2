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
    assert settings.lease_timeout_s == config.coordinator.lease_timeout_s
    assert settings.heartbeat_interval_s == config.coordinator.heartbeat_interval_s
    assert settings.strikes_to_ban == config.trust.strikes_to_ban
    assert settings.strike_witnesses == config.trust.strike_witnesses
    assert settings.strike_memory_rounds == config.trust.strike_memory_rounds
    assert settings.credential_ttl_s == config.trust.credential_ttl_s
    core = settings.core_config()
    assert core.retry_after_s == config.coordinator.heartbeat_interval_s


def test_trust_section_defaults_are_the_coordinators_defaults():
    from coordinator.state import (
        DEFAULT_STRIKE_MEMORY_ROUNDS,
        DEFAULT_STRIKE_WITNESSES,
        DEFAULT_STRIKES_TO_BAN,
    )
    from lila_net.config import TrustSection
    from lila_net.credentials import DEFAULT_CREDENTIAL_TTL_S

    trust = TrustSection()
    assert (trust.strikes_to_ban, trust.strike_witnesses, trust.strike_memory_rounds, trust.credential_ttl_s) == (
        DEFAULT_STRIKES_TO_BAN, DEFAULT_STRIKE_WITNESSES, DEFAULT_STRIKE_MEMORY_ROUNDS, DEFAULT_CREDENTIAL_TTL_S)


def test_trust_section_rejects_a_policy_that_can_never_ban():
    from lila_net.config import ConfigError, TrustSection

    with pytest.raises(ConfigError, match="strike_memory_rounds"):
        TrustSection(strikes_to_ban=5, strike_memory_rounds=4).validate()
    with pytest.raises(ConfigError, match="strike_witnesses"):
        TrustSection(strike_witnesses=0).validate()
    with pytest.raises(ConfigError, match="credential_ttl_s"):
        TrustSection(credential_ttl_s=1).validate()


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

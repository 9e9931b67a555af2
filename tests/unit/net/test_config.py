# SPDX-License-Identifier: AGPL-3.0-or-later
"""Run configs: every shipped config loads, round-trips through TOML, and bad values name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lila_model.config import PRESETS
from lila_net.config import ConfigError, RunConfig, load_run_config, loads_run_config
from tests.helpers.paths import RUNS

SHIPPED = sorted(RUNS.glob("*.toml"))


def test_there_are_shipped_runs() -> None:
    assert {p.name for p in SHIPPED} >= {"cpu-demo.toml", "lila-20m.toml", "lila-1b.toml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_run_loads_and_round_trips(path: Path) -> None:
    config = load_run_config(path)
    assert config.model.preset in PRESETS
    assert loads_run_config(config.to_toml()) == config


def _demo_dict() -> dict:
    return load_run_config(RUNS / "cpu-demo.toml").to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["codec"].update(bits=5), "codec.bits=5"),
        (lambda d: d["codec"].update(name="zip"), "codec.name='zip'"),
        (lambda d: d["diloco"].update(inner_steps=0), "diloco.inner_steps=0"),
        (lambda d: d["diloco"].update(inner_steps="ten"), "diloco.inner_steps must be int"),
        (lambda d: d["coordinator"].update(lease_timeout_s=1.0), "under 3 heartbeat intervals"),
        (lambda d: d["trust"].update(aggregator="median"), "trust.aggregator='median'"),
        (lambda d: d["run"].update(name="bad name!"), "run.name"),
        (lambda d: d["data"].update(sources={}), "data.sources is empty"),
        (lambda d: d["data"].update(colour="red"), "unknown key(s) ['colour']"),
        (lambda d: d.update(extra={}), "unknown section(s) ['extra']"),
        (lambda d: d["curriculum"]["stages"][0].update(mixture={"nope": 1.0}), "does not declare"),
    ],
)
def test_bad_values_name_the_key(mutate, message: str) -> None:
    raw = _demo_dict()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    assert message in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(bad)

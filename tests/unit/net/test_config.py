# SPDX-License-Identifier: AGPL-3.0-or-later
"""Run configs: every shipped config loads, round-trips through TOML, and bad values name the fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lila_model.config import PRESETS
from lila_net.config import (
    CodecSection,
    ConfigError,
    RunConfig,
    TrustSection,
    load_run_config,
    loads_run_config,
)
from tests.helpers.paths import RUNS

SHIPPED = sorted(RUNS.glob("*.toml"))


def test_there_are_shipped_runs() -> None:
    assert {p.name for p in SHIPPED} >= {"cpu-demo.toml", "lila-20m.toml", "lila-1b.toml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_run_loads_and_round_trips(path: Path) -> None:
    config = load_run_config(path)
    assert config.model.preset in PRESETS
    assert loads_run_config(config.to_toml()) == config


def test_shipped_runs_and_the_default_aggregate_robustly() -> None:
    """One peer holding a join token can steer a ``mean`` round at will; no shipped run may use it."""
    assert TrustSection().aggregator == "centered_clip"
    assert {path.name: load_run_config(path).trust.aggregator for path in SHIPPED} == {
        path.name: "centered_clip" for path in SHIPPED
    }


def _demo_dict() -> dict:
    return load_run_config(RUNS / "cpu-demo.toml").to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["codec"].update(bits=9), "e8 bits must be one of"),
        (lambda d: d["codec"].update(block_size=60), "codec.block_size=60: must be a multiple of 8"),
        (lambda d: d["codec"].update(name="zip"), "codec.name='zip'"),
        (lambda d: d["diloco"].update(inner_steps=0), "diloco.inner_steps=0"),
        (lambda d: d["diloco"].update(inner_steps="ten"), "diloco.inner_steps must be int"),
        (lambda d: d["coordinator"].update(lease_timeout_s=1.0), "under 3 heartbeat intervals"),
        (lambda d: d["trust"].update(aggregator="median"), "trust.aggregator='median': choose one of mean"),
        (lambda d: d["model"].update(preset="gpt-9"), "model.preset='gpt-9': choose one of debug"),
        (lambda d: d["diloco"].update(outer_lr=float("nan")), "diloco.outer_lr=nan: must be a finite number"),
        (lambda d: d["diloco"].update(batch_size=True), "diloco.batch_size must be int, got bool"),
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


def test_sections_check_themselves_when_replaced() -> None:
    config = load_run_config(RUNS / "cpu-demo.toml")
    with pytest.raises(ConfigError, match=r"diloco.inner_steps=0: must be >= 1"):
        replace(config.diloco, inner_steps=0)
    with pytest.raises(ConfigError, match="under 3 heartbeat intervals"):
        replace(config.coordinator, heartbeat_interval_s=60.0)
    with pytest.raises(ConfigError, match="does not declare"):
        replace(config, data=replace(config.data, sources={"other": "bundled:fineweb-edu-sample"}))
    assert replace(config.diloco, outer_lr=1).outer_lr == 1.0  # an int where a float is expected is widened


def test_trust_rules() -> None:
    with pytest.raises(ConfigError, match="strike_memory_rounds"):
        TrustSection(strikes_to_ban=5, strike_memory_rounds=4)
    with pytest.raises(ConfigError, match=r"trust.strike_witnesses=0: must be >= 1 \(2 is typical\)"):
        TrustSection(strike_witnesses=0)
    with pytest.raises(ConfigError, match=r"trust.credential_ttl_s=1.0: must be >= 60"):
        TrustSection(credential_ttl_s=1)


def test_codec_options_are_the_codecs_own() -> None:
    assert CodecSection(name="fp16").options() == {}
    assert CodecSection(name="int4", hadamard=False).options() == {"block": 64, "rotation": 0, "dither": False}
    assert CodecSection(name="e8", bits=2).options() == {"block": 64, "rotation": None, "dither": False, "bits": 2}
    assert CodecSection(name="sparse-e8", bits=2, hadamard=False, density=0.02).options() == {
        "density": 0.02, "chunk": 4096, "bits": 2, "rotation": 0}
    assert CodecSection(name="sparse-int", bits=2).options()["rotation"] == 64
    with pytest.raises(ConfigError, match=r"codec\.density"):
        CodecSection(name="sparse-e8", density=0.0)
    with pytest.raises(ConfigError, match=r"chunk must be a multiple of 8 in 8\.\.65536"):
        CodecSection(name="sparse-e8", chunk=2**17)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""LilaConfig validation, the preset registry and preset parameter counts (on the meta device)."""

from __future__ import annotations

import pytest
import torch

from lila_model.config import PRESETS, VARIANTS, LilaConfig, get_preset, nominal_params
from lila_model.model import LilaLM

PARAM_TOLERANCE = 0.10


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", PRESETS)
def test_preset_non_embedding_params_within_ten_percent(name: str, variant: str) -> None:
    config = get_preset(name, variant=variant)
    with torch.device("meta"):
        model = LilaLM(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    count = model.num_params(non_embedding=True)
    nominal = nominal_params(name)
    assert abs(count - nominal) <= PARAM_TOLERANCE * nominal, f"{name}/{variant}: {count:,} vs {nominal:,}"


def test_debug_preset_exact_counts() -> None:
    # d=144, 4 layers: per layer 4·d² (attention) + 8·d² (MLP) + 2·d (LayerNorm weights), plus ln_f.
    d, layers = 144, 4
    expected = layers * (12 * d * d + 2 * d) + d
    vanilla = LilaLM(get_preset("debug", vocab_size=256))
    assert vanilla.num_params() == expected == 996_624
    assert vanilla.num_params(non_embedding=False) == expected + 256 * d
    # monster: q/k frozen (−2·d²) and a 5× MLP (+2·d²): the same number of learned weights.
    assert LilaLM(get_preset("debug", variant="monster", vocab_size=256)).num_params() == expected
    # e8: + per layer H bias scales, down (d·8), up (8·d), one gain.
    assert LilaLM(get_preset("debug", variant="e8", vocab_size=256)).num_params() == expected + layers * (
        3 + 16 * d + 1
    )
    # leech (snapping every 4th layer): + H log-radii in one layer.
    assert LilaLM(get_preset("debug", variant="leech", vocab_size=256)).num_params() == expected + 3


def test_preset_shapes() -> None:
    config = get_preset("lila-20m")
    assert (config.d_model, config.n_layers, config.n_heads, config.head_dim) == (384, 12, 8, 48)
    assert config.vocab_size == 8192
    for name in PRESETS:
        assert get_preset(name).head_dim % 24 == 0
    assert get_preset("lila-20m", vocab_size=2048).vocab_size == 2048
    assert get_preset("debug", variant="monster").mlp_hidden == 5 * 144
    assert get_preset("debug").mlp_hidden == 4 * 144


def test_to_dict_round_trip() -> None:
    config = get_preset("lila-125m", variant="leech", lambda_geo=0.05)
    assert LilaConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"variant": "e9"}, "variant='e9' is unknown"),
        ({"d_model": 128, "n_heads": 4}, "not a multiple of 24"),
        ({"d_model": 100, "n_heads": 3}, "not divisible by n_heads"),
        ({"position": "alibi"}, "position='alibi' is unknown"),
        ({"d_model": 144, "n_heads": 3, "leech_blocks_per_head": 3}, "exceeds the 2 Leech blocks"),
        ({"n_layers": 0}, "n_layers=0 must be a positive integer"),
        ({"lambda_geo": -1.0}, "lambda_geo=-1.0 must be >= 0"),
        ({"e8_temperature": 0.0}, "e8_temperature=0.0 must be a finite number > 0"),
        ({"dropout": 1.0}, "dropout=1.0 must be in [0, 1)"),
        ({"leech_targets": "v"}, "leech_targets='v' is unknown"),
    ],
)
def test_bad_config_names_the_problem(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
        LilaConfig(**fields)


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown preset 'lila-7b'"):
        get_preset("lila-7b")
    with pytest.raises(ValueError, match=r"unknown LilaConfig override\(s\) \['dmodel'\]"):
        get_preset("debug", dmodel=128)
    with pytest.raises(ValueError, match=r"unknown LilaConfig keys \['colour'\]"):
        LilaConfig.from_dict({"colour": "blue"})


def test_leech_layer_selection() -> None:
    config = get_preset("lila-20m", variant="leech", leech_every=4)
    assert [i for i in range(config.n_layers) if config.leech_layer(i)] == [3, 7, 11]
    config = get_preset("lila-20m", variant="leech", leech_every=5)
    assert [i for i in range(config.n_layers) if config.leech_layer(i)] == [1, 6, 11]
    debug = get_preset("debug", variant="leech", leech_every=100)
    assert [i for i in range(debug.n_layers) if debug.leech_layer(i)] == [3]  # the last layer always snaps
    assert not any(get_preset("lila-20m").leech_layer(i) for i in range(12))

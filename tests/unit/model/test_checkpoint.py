# SPDX-License-Identifier: AGPL-3.0-or-later
"""Checkpoints round-trip exactly (through meta-device construction) and bad ones fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lila_model.checkpoint import CheckpointError, load_checkpoint, load_config, save_checkpoint
from lila_model.config import VARIANTS, get_preset
from lila_model.model import LilaLM


def trained_model(variant: str) -> LilaLM:
    torch.manual_seed(0)
    model = LilaLM(
        get_preset("debug", variant=variant, vocab_size=96, block_size=32, n_layers=2, leech_every=1)
    )
    # Move every weight (and geometric scale) off its init so a silent re-init would be caught.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 96, (2, 17))
    for _ in range(2):
        optimizer.zero_grad()
        model(idx[:, :-1], idx[:, 1:]).loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_is_exact(tmp_path: Path, variant: str) -> None:
    model = trained_model(variant)
    extra = {"tokenizer": "fineweb-edu-2048", "step": 7}
    save_checkpoint(tmp_path, model, extra=extra)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "extra.json", "model.safetensors"]
    loaded, loaded_extra = load_checkpoint(tmp_path)
    assert loaded_extra == extra
    assert loaded.config == model.config
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        assert torch.equal(a, b), name  # non-persistent buffers (E8 roots) rebuilt after meta init
    idx = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(idx).logits, loaded(idx).logits)


def test_config_json_is_readable(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, trained_model("vanilla"))
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["format_version"] == 1 and data["d_model"] == 144 and data["variant"] == "vanilla"
    assert load_config(tmp_path).vocab_size == 96
    assert not (tmp_path / "extra.json").exists()
    assert load_checkpoint(tmp_path)[1] == {}


def test_bad_checkpoints_fail_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tmp_path / "a", trained_model("vanilla"))
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has a config but no weights"):
        load_checkpoint(tmp_path / "a")
    save_checkpoint(tmp_path / "b", trained_model("vanilla"))
    save_checkpoint(tmp_path / "c", trained_model("e8"))
    (tmp_path / "c" / "model.safetensors").replace(tmp_path / "b" / "model.safetensors")
    with pytest.raises(CheckpointError, match="different models"):
        load_checkpoint(tmp_path / "b")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["format_version"] = 99
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path / "c")

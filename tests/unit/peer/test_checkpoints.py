# SPDX-License-Identifier: AGPL-3.0-or-later
"""Peer checkpoints: exact round trip, corrupt files refused, a full disk keeps the previous one."""

from __future__ import annotations

import errno

import pytest
import torch

import peer.checkpoints as ckpt_module
from lila_model.config import get_preset
from lila_model.model import LilaLM
from peer.checkpoints import CheckpointStore
from peer.outer import OuterOptimizer, flatten_parameters


def _state(seed: int) -> tuple[LilaLM, dict]:
    torch.manual_seed(seed)
    model = LilaLM(get_preset("debug", n_layers=1))
    outer = OuterOptimizer(flatten_parameters(model), lr=0.7, momentum=0.9)
    return model, outer.state_dict()


def test_round_trip_and_fallback_on_corruption(tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    m1, o1 = _state(1)
    store.save(step=1, model=m1, outer_state=o1, inner_state={"step": 1}, meta={"outer_step": 1})
    m2, o2 = _state(2)
    second = store.save(step=2, model=m2, outer_state=o2, inner_state={"step": 2}, meta={"outer_step": 2})

    loaded = store.load_latest()
    assert loaded is not None and loaded.meta["outer_step"] == 2
    assert torch.equal(flatten_parameters(loaded.model), flatten_parameters(m2))
    assert torch.equal(loaded.outer_state["global_params"], o2["global_params"])

    with open(second / "outer.safetensors", "r+b") as f:  # flip one byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    fallback = store.load_latest()
    assert fallback is not None and fallback.meta["outer_step"] == 1
    assert torch.equal(flatten_parameters(fallback.model), flatten_parameters(m1))


def test_disk_full_during_write_keeps_previous(tmp_path, monkeypatch) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    m1, o1 = _state(1)
    store.save(step=1, model=m1, outer_state=o1, inner_state={}, meta={"outer_step": 1})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_file", full_disk)
    m2, o2 = _state(2)
    with pytest.raises(OSError):
        store.save(step=2, model=m2, outer_state=o2, inner_state={}, meta={"outer_step": 2})
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = store.load_latest()
    assert loaded is not None and loaded.meta["outer_step"] == 1
    assert torch.equal(flatten_parameters(loaded.model), flatten_parameters(m1))


def test_prunes_to_keep(tmp_path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    model, outer = _state(0)
    for step in range(1, 5):
        store.save(step=step, model=model, outer_state=outer, inner_state={}, meta={})
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]


def test_prunes_by_step_number_not_by_name(tmp_path) -> None:
    """Past 8 digits ``step-100000000`` sorts before ``step-99999999`` as text (as ``step-10`` before
    ``step-9``); pruning by name would delete the checkpoint just written and resume from the older one."""
    store = CheckpointStore(tmp_path, keep=1)
    model, outer = _state(0)
    store.save(step=99_999_999, model=model, outer_state=outer, inner_state={}, meta={"outer_step": 99_999_999})
    store.save(step=100_000_000, model=model, outer_state=outer, inner_state={}, meta={"outer_step": 100_000_000})
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-100000000"]
    loaded = store.load_latest()
    assert loaded is not None and loaded.meta["outer_step"] == 100_000_000
    (tmp_path / "step-9").mkdir()  # an unpadded older directory: still older than step 100000000 …
    (tmp_path / "step-notes").mkdir()  # … and a non-numeric one is not a checkpoint at all
    store.save(step=100_000_001, model=model, outer_state=outer, inner_state={}, meta={"outer_step": 100_000_001})
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-100000001", "step-notes"]

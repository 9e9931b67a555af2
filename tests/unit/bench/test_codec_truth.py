# SPDX-License-Identifier: AGPL-3.0-or-later
"""Recorded pseudo-gradients (peer.recording) and the codec truth table read from them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from bench.codec_truth import load_recordings, main, truth_table
from lila_net.config import load_run_config
from peer.options import PeerOptions
from peer.recording import maybe_record
from tests.helpers.paths import REPO


def _peer(workdir: Path, every: int) -> SimpleNamespace:
    """The parts of a peer that recording reads (real options and run config)."""
    options = PeerOptions(coordinator="127.0.0.1:7600", token="t", workdir=workdir, record_every=every)
    return SimpleNamespace(options=options, run=load_run_config(REPO / "runs" / "cpu-demo.toml"),
                           progress=SimpleNamespace(outer_step=3))


def test_every_nth_round_is_recorded_with_what_tells_it_apart(tmp_path: Path):
    peer = _peer(tmp_path, every=2)
    vector = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    written = [maybe_record(peer, r, vector) for r in range(1, 6)]
    assert [p is not None for p in written] == [False, True, False, True, False]
    assert sorted(p.name for p in (tmp_path / "pseudo-gradients").iterdir()) == ["round-000002.pt",
                                                                               "round-000004.pt"]
    (record,) = load_recordings([tmp_path / "pseudo-gradients" / "round-000004.pt"])
    assert (record["round"], record["inner_steps"], record["preset"], record["numel"]) == (4, 10, "debug", 4096)
    assert torch.equal(record["vector"], vector)
    assert maybe_record(_peer(tmp_path / "off", every=0), 4, vector) is None


def test_truth_table_covers_every_family_rotation_and_rate_it_has(tmp_path: Path, capsys):
    peer = _peer(tmp_path, every=1)
    maybe_record(peer, 1, torch.randn(8192, generator=torch.Generator().manual_seed(1)))
    rows = truth_table(load_recordings([tmp_path / "pseudo-gradients"]))
    # dense int/e8/leech at 2 and 4 bits, sparse at 1, 2 and 4, each rotated and not
    assert len(rows) == 3 * 2 * 2 + 2 * 3 * 2
    cell = {(r["codec"], r["bits"], r["rotated"]): r for r in rows}
    assert cell["e8", 4, False]["relative_error"] < cell["e8", 2, False]["relative_error"] < 1
    assert all(cell[f, b, rot]["bits_per_coord"] < 0.2 for f in ("sparse-int", "sparse-e8") for b in (1, 2, 4)
               for rot in (False, True))
    assert cell["sparse-e8", 2, False]["reduction_vs_fp32"] > 150
    assert main([str(tmp_path / "pseudo-gradients"), "--families", "e8", "--out", str(tmp_path / "t.json")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "t.json").exists()

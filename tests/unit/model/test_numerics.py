# SPDX-License-Identifier: AGPL-3.0-or-later
"""Numerics and packaging: bf16 autocast paths, fp32 on CPU, and no networking imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lila_model.config import VARIANTS
from lila_model.model import LilaLM
from tests.helpers.models import tiny_model

VOCAB = 64


def tiny(variant: str) -> LilaLM:
    return tiny_model(variant, vocab_size=VOCAB, block_size=32)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0))
    return data[:, :-1], data[:, 1:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_runs_every_variant(variant: str) -> None:
    """The code paths CUDA takes under bf16 autocast (exercised here with CPU autocast)."""
    model = tiny(variant)
    idx, targets = batch()
    with torch.no_grad():
        reference = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, targets)
    assert out.logits.dtype == torch.bfloat16
    assert out.ce_loss.dtype == torch.float32 and out.geo_loss.dtype == torch.float32
    assert abs(float(out.ce_loss.detach()) - float(reference.ce_loss)) < 0.05
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_cpu_forward_stays_fp32_with_mixed_precision_on() -> None:
    model = tiny("vanilla")
    assert model.config.mixed_precision
    idx, _ = batch()
    assert model(idx).logits.dtype == torch.float32


def test_lila_model_imports_no_networking_code() -> None:
    code = (
        "import sys, lila_model\n"
        "from lila_model import LilaLM, get_preset, save_checkpoint, load_checkpoint, layer_telemetry, generate\n"
        "import lila_model.lattice, lila_model.resonance, lila_model.monster\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hivemind', 'grpc'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"

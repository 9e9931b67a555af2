# SPDX-License-Identifier: AGPL-3.0-or-later
"""Weight export: file size, fidelity, loading either format, corruption, and the ``lila export`` command."""

from __future__ import annotations

import pytest
import torch

from lila_codec.errors import ExportError
from lila_codec.export import export_model, is_export_file, load_model
from lila_model.checkpoint import save_checkpoint
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_run.cli import main

SMALL = dict(n_layers=1, vocab_size=512, d_model=96, n_heads=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = LilaLM(get_preset("debug", **SMALL)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    save_checkpoint(path, model, extra={"tokenizer": "fineweb-edu-2048", "step": 3})
    return path, model


def _logits(model: LilaLM) -> torch.Tensor:
    idx = torch.arange(64).remainder(512).view(2, 32)
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize(
    ("quant", "bits", "max_rel_weight_error"),
    [("e8", 4, 0.1), ("e8", 2, 0.45), ("int4", 4, 0.12), ("int8", 4, 0.01), ("fp16", 4, 1e-3)],
)
def test_export_round_trip(checkpoint, tmp_path, quant, bits, max_rel_weight_error):
    path, model = checkpoint
    out = tmp_path / "model.lila"
    report = export_model(path, out, quant=quant, bits=bits)
    assert is_export_file(out) and report.file_bytes == out.stat().st_size
    params = sum(p.numel() for p in model.parameters())
    assert report.total_params == params
    assert report.fp32_bytes == 4 * params
    if quant == "e8":
        # 4.25 or 2.25 bits plus each payload's ~70-byte header
        assert bits + 0.25 < report.bits_per_quantized_weight < bits + 0.3
        assert report.compression > 32 / (bits + 0.25) * 0.9
    loaded, meta = load_model(out)
    assert meta["tokenizer"] == "fineweb-edu-2048" and meta["step"] == 3
    assert meta["export"]["quant"] == quant
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and restored[name].shape == tensor.shape
        if tensor.dim() == 2 and name in dict(model.named_parameters()):
            rel = float((restored[name] - tensor).norm() / tensor.norm())
            assert 0 < rel <= max_rel_weight_error
        elif quant != "fp16":
            assert torch.equal(restored[name], tensor)  # norms, scalars and buffers are exact
    logit_error = float((_logits(loaded) - _logits(model)).norm() / _logits(model).norm())
    assert logit_error < 2 * max_rel_weight_error + 1e-3


def test_load_model_accepts_a_checkpoint_directory(checkpoint):
    path, model = checkpoint
    loaded, meta = load_model(path)
    assert meta["tokenizer"] == "fineweb-edu-2048" and "export" not in meta
    assert torch.equal(_logits(loaded), _logits(model))


def test_corrupt_and_foreign_files_are_rejected(checkpoint, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "m.lila"
    export_model(path, out, quant="e8", bits=3)
    data = out.read_bytes()
    damaged = bytearray(data)
    damaged[-10] ^= 0x40
    (tmp_path / "damaged.lila").write_bytes(bytes(damaged))
    with pytest.raises(ExportError, match="sha256"):
        load_model(tmp_path / "damaged.lila")
    (tmp_path / "short.lila").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="truncated"):
        load_model(tmp_path / "short.lila")
    (tmp_path / "other.bin").write_bytes(b"PK\x03\x04 not an export")
    with pytest.raises(ExportError, match="magic"):
        load_model(tmp_path / "other.bin")
    with pytest.raises(ExportError, match="does not exist"):
        load_model(tmp_path / "missing.lila")


def test_cli_export(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "cli.lila"
    assert main(["export", "--checkpoint", str(path), "--quant", "e8", "--bits", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out.stat().st_size} bytes" in printed and "smaller than fp32" in printed
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(path), "--bits", "9", "--out", str(out)])

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The shared block-codec plumbing: chunking never changes a payload, options, repr, eager fallback."""

from __future__ import annotations

import pytest
import torch

from lila_codec import E8Codec, IntCodec, LeechCodec, decode, get_codec
from lila_codec import e8 as e8_module
from lila_codec.block import BlockCodec

BLOCK_CODECS = [
    ("e8", {"bits": 4}),
    ("e8", {"bits": 2, "dither": True, "exhaustive": True}),
    ("leech", {"bits": 3, "dither": True}),
    ("int4", {"scale_candidates": 4, "rotation": 16, "dither": True}),
]


def _data(numel: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(seed)) ** 3  # heavy-tailed


@pytest.mark.parametrize(("name", "options"), BLOCK_CODECS)
def test_chunk_size_never_changes_the_payload(name, options, monkeypatch):
    codec = get_codec(name, **options)
    x = _data(codec.block * 7 + 5)
    payload = codec.encode(x, seed=3)
    decoded = decode(payload)
    # three blocks per chunk: several chunks, the last one partial
    monkeypatch.setattr(type(codec), "chunk_blocks", 3)
    monkeypatch.setattr(e8_module, "EAGER_CHUNK_BLOCKS", 3)
    assert codec.encode(x, seed=3) == payload
    assert torch.equal(decode(payload), decoded)


def test_failed_compilation_falls_back_to_eager_for_every_block(monkeypatch, caplog):
    class BrokenCompiler:
        compiled = True

        def peaks(self, *args):
            raise RuntimeError("no compiler toolchain")

    monkeypatch.setattr(e8_module, "_compiled_kernels", BrokenCompiler)
    monkeypatch.setattr(e8_module, "COMPILED_CHUNK_BLOCKS", 8)
    monkeypatch.setattr(e8_module, "EAGER_CHUNK_BLOCKS", 3)
    x = _data(64 * 20 + 1, seed=1)
    compiled = E8Codec(compile=True)
    with caplog.at_level("WARNING", logger="lila_codec.e8"):
        payload = compiled.encode(x, seed=5)
    assert "falls back to eager" in caplog.text
    assert not compiled.compile
    assert payload == E8Codec().encode(x, seed=5)


def test_rotation_none_picks_the_largest_power_of_two_dividing_the_block():
    assert E8Codec(block=96).rotation == 32
    assert LeechCodec(block=72).rotation == 8
    assert IntCodec(rotation=None, block=48).rotation == 16
    assert IntCodec().rotation == 0  # the int codec does not rotate unless asked
    codec = get_codec("int4", rotation=None)  # what a run config with hadamard = true asks for
    x = _data(200)
    assert codec.decode(codec.encode(x)).shape == x.shape


def test_repr_shows_every_option_in_constructor_order():
    assert repr(get_codec("e8")) == (
        "E8Codec(bits=4, block=64, rotation=64, dither=False, scale_candidates=4, exhaustive=False, "
        "compile=False)"
    )
    assert repr(get_codec("int4", scale_candidates=16)) == (
        "IntCodec(bits=4, block=64, scale_candidates=16, rotation=0, dither=False)"
    )
    assert repr(get_codec("leech", rotation=0)) == (
        "LeechCodec(bits=4, block=96, scale_candidates=3, rotation=0, dither=False)"
    )


@pytest.mark.parametrize("cls", [E8Codec, LeechCodec, IntCodec])
def test_block_codecs_share_the_base(cls):
    assert issubclass(cls, BlockCodec)
    with pytest.raises(ValueError, match=f"{cls.name} block size must be a multiple of {cls.block_multiple}"):
        cls(block=cls.block_multiple + 1)
    with pytest.raises(ValueError, match=r"scale_candidates must be in 1\.\."):
        cls(scale_candidates=0)

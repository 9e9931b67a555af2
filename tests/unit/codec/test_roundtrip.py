# SPDX-License-Identifier: AGPL-3.0-or-later
"""Every codec: shapes and dtypes preserved, sizes exact, bad input refused, decoding deterministic."""

from __future__ import annotations

import math

import pytest
import torch

from lila_codec import CodecError, decode, get_codec, peek_header

CODECS = {
    "fp32": {},
    "fp16": {},
    "int8": {},
    "int4": {"scale_candidates": 4},
    "int2-rot-dither": {"bits": 2, "rotation": 32, "dither": True},
    "e8-r2": {"bits": 2},
    "e8-r4-dither": {"bits": 4, "dither": True},
    "e8-r8-norot": {"bits": 8, "rotation": 0, "block": 128},
    "leech-r3": {"bits": 3, "scale_candidates": 2},
}
SHAPES = [(1,), (37,), (3, 37), (2, 3, 5), (0,), (0, 5), (), (130,)]
# Loose per-codec ceilings on the relative L2 error of small tensors (quality is measured on
# large tensors in test_voronoi.py); 2-bit codes on a handful of values can lose most of it.
RELATIVE_ERROR_CEILING = {
    "fp32": 0.0,
    "fp16": 1e-3,
    "int8": 0.02,
    "int4": 0.2,
    "int2-rot-dither": 1.2,
    "e8-r2": 0.8,
    "e8-r4-dither": 0.25,
    "e8-r8-norot": 0.01,
    "leech-r3": 0.4,
}


def _relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    x64, y64 = x.double(), y.double()
    return float((y64 - x64).norm() / x64.norm().clamp(min=1e-300))


def _codec(key: str):
    name = key.split("-")[0]
    if name.startswith("int") and name not in ("int8", "int4"):
        name = "int"
    if name.startswith("e8"):
        name = "e8"
    return get_codec(name, **CODECS[key])


@pytest.mark.parametrize("key", sorted(CODECS))
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_dtypes_and_sizes_are_preserved(key, shape):
    codec = _codec(key)
    gen = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.randn(shape, generator=gen).to(dtype)
        payload = codec.encode(x, seed=11)
        assert len(payload) == codec.encoded_nbytes(x.shape)
        y = codec.decode(payload)
        assert y.shape == x.shape and y.dtype == dtype and y.device.type == "cpu"
        assert torch.equal(decode(payload), y)
        if x.numel():
            assert _relative_error(x, y) <= RELATIVE_ERROR_CEILING[key]


@pytest.mark.parametrize("key", sorted(CODECS))
def test_zero_and_constant_tensors(key):
    codec = _codec(key)
    zeros = torch.zeros(3, 64)
    assert torch.equal(codec.decode(codec.encode(zeros)), zeros)
    const = torch.full((200,), -0.375)
    assert _relative_error(const, codec.decode(codec.encode(const))) <= RELATIVE_ERROR_CEILING[key]


@pytest.mark.parametrize("key", sorted(CODECS))
def test_non_finite_and_non_float_input_is_refused(key):
    codec = _codec(key)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(100)
        x[17] = bad
        with pytest.raises(CodecError, match="non-finite"):
            codec.encode(x)
    with pytest.raises(CodecError, match="float tensors"):
        codec.encode(torch.arange(10))
    with pytest.raises(CodecError, match="torch tensors"):
        codec.encode([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="seed"):
        codec.encode(torch.ones(8), seed=-1)
    with pytest.raises(CodecError, match="seed"):
        codec.encode(torch.ones(8), seed=1 << 64)


def test_fp16_refuses_values_it_cannot_represent():
    with pytest.raises(CodecError, match="limit"):
        get_codec("fp16").encode(torch.tensor([1e6]))
    with pytest.raises(CodecError, match="limit"):
        get_codec("e8").encode(torch.tensor([1e30]))


def test_extreme_but_finite_magnitudes_round_trip():
    gen = torch.Generator().manual_seed(8)
    codec = get_codec("e8", bits=4)
    for magnitude in (1e-30, 1e-8, 1.0, 1e8, 1e18):
        x = torch.randn(256, generator=gen) * magnitude
        assert _relative_error(x, codec.decode(codec.encode(x))) < 0.1


@pytest.mark.parametrize("key", ["int4", "e8-r4-dither", "leech-r3"])
def test_encoding_and_decoding_are_deterministic(key):
    codec = _codec(key)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1000, generator=gen)
    first, second = codec.encode(x, seed=5), codec.encode(x.clone(), seed=5)
    assert first == second
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = codec.decode(first)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, codec.decode(first))
    assert codec.encode(x, seed=6) != first  # the seed changes rotation (and dither)


def test_wide_scale_range_within_one_tensor():
    """Blocks 10^9 apart in magnitude each keep their own precision (fp16 scale + payload exponent)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(4, 64, generator=gen) * torch.tensor([[1e-5], [1.0], [1e2], [1e4]])
    codec = get_codec("e8", bits=4, rotation=0)
    y = codec.decode(codec.encode(x))
    rel = (y - x).norm(dim=1) / x.norm(dim=1)
    assert bool((rel < 0.12).all())


@pytest.mark.parametrize(
    ("name", "options", "bits"),
    [
        ("e8", {"bits": 4}, 4.25),
        ("e8", {"bits": 2}, 2.25),
        ("int4", {}, 4.25),
        ("leech", {"bits": 4}, 4 + 16 / 96),
    ],
)
def test_bits_per_coordinate(name, options, bits):
    codec = get_codec(name, **options)
    assert codec.bits_per_coord(96 * 64 * 10) == pytest.approx(bits)
    payload = codec.encode(torch.randn(96 * 64 * 10))
    h = peek_header(payload)
    assert 8 * (h.scales_nbytes + h.codes_nbytes) / h.numel == pytest.approx(bits)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown codec"):
        get_codec("e9")
    with pytest.raises(ValueError, match="bad options"):
        get_codec("e8", colour="red")
    with pytest.raises(ValueError, match="bits"):
        get_codec("e8", bits=1)
    with pytest.raises(ValueError, match="block"):
        get_codec("e8", block=60)
    with pytest.raises(ValueError, match="rotation"):
        get_codec("e8", block=64, rotation=128)
    with pytest.raises(ValueError, match="fixed width"):
        get_codec("int4", bits=3)
    with pytest.raises(ValueError, match="multiple of 24"):
        get_codec("leech", block=64)


def _snr(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * math.log10(float(x.square().sum() / (x - y).square().sum()))


def test_rotation_makes_heavy_tails_look_gaussian():
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(64 * 512, generator=gen) ** 3  # heavy-tailed, like raw pseudo-gradients
    plain = get_codec("e8", bits=4, rotation=0)
    rotated = get_codec("e8", bits=4, rotation=64)
    gaussian = torch.randn(64 * 512, generator=gen)
    rotated_snr = _snr(x, rotated.decode(rotated.encode(x)))
    assert rotated_snr > _snr(x, plain.decode(plain.encode(x))) + 2.0
    assert abs(rotated_snr - _snr(gaussian, rotated.decode(rotated.encode(gaussian)))) < 1.0

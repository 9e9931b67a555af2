# SPDX-License-Identifier: AGPL-3.0-or-later
"""Fuzzing the codec payload decoder (what a peer decodes from other peers' bytes): thousands of random and
mutated payloads, with and without a repaired CRC so the mutations reach the field and codec checks. Each
is either a valid payload (a tensor of its declared size) or refused with a CodecError that says what is
wrong; nothing else is raised and nothing larger than the payload justifies is allocated."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lila_codec import CodecError, decode, get_codec

CODECS = {
    "fp32": {},
    "fp16": {},
    "int8": {"block": 64},
    "int4": {"block": 32},
    "e8-4": {"bits": 4, "block": 64},
    "e8-2": {"bits": 2, "block": 64, "rotation": 0},
    "leech": {"block": 96},
}
HEADER_BYTES = 52
CRC_BYTES = 4
MAX_EXPANSION = 64  # decoded float32 bytes per payload byte; any codec here stays far below
RANDOM_EXAMPLES = 1500
MUTATION_EXAMPLES = 2500
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "derandomize": True}


def _payloads() -> dict[str, bytes]:
    torch.manual_seed(0)
    values = torch.randn(300)
    out = {}
    for name, options in CODECS.items():
        codec = get_codec(name.split("-")[0], **options)
        out[name] = bytes(codec.encode(values, seed=7))
    return out


PAYLOADS = _payloads()


def _check(payload: bytes) -> str:
    """Decode; return "ok" or the error message. Anything but CodecError fails the test."""
    try:
        tensor = decode(payload)
    except CodecError as error:
        message = str(error)
        assert message and len(message) < 1000, message
        return message
    assert isinstance(tensor, torch.Tensor)
    assert tensor.numel() * 4 <= MAX_EXPANSION * len(payload) + 1024
    return "ok"


def test_every_valid_payload_decodes() -> None:
    for name, payload in PAYLOADS.items():
        assert _check(payload) == "ok", name
        assert decode(payload).shape == (300,)


@settings(max_examples=RANDOM_EXAMPLES, **SETTINGS)
@given(st.binary(max_size=4096))
def test_random_bytes_get_a_codec_error(data: bytes) -> None:
    if data.startswith(b"LILC"):
        _check(data)
    else:
        assert _check(data) != "ok"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    payload = bytearray(PAYLOADS[draw(st.sampled_from(sorted(PAYLOADS)))])
    kind = draw(st.sampled_from(["header", "anywhere", "truncate", "extend", "field"]))
    if kind == "header":
        for _ in range(draw(st.integers(1, 4))):
            payload[draw(st.integers(4, HEADER_BYTES - 1))] = draw(st.integers(0, 255))
    elif kind == "anywhere":
        for _ in range(draw(st.integers(1, 8))):
            payload[draw(st.integers(0, len(payload) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del payload[draw(st.integers(0, len(payload) - 1)) :]
    elif kind == "extend":
        payload[-CRC_BYTES:-CRC_BYTES] = draw(st.binary(min_size=1, max_size=64))
    else:  # overwrite one header field with an extreme value
        offset, fmt = draw(st.sampled_from([(9, "<B"), (10, "<H"), (12, "<I"), (16, "<h"), (28, "<Q"), (36, "<Q"), (44, "<Q"), (52, "<Q")]))
        top = 2 ** (8 * struct.calcsize(fmt)) - 1
        value = draw(st.one_of(st.integers(0, 16), st.just(top), st.integers(0, top)))
        if fmt == "<h":
            value = value - 2**16 if value >= 2**15 else value
        struct.pack_into(fmt, payload, offset, value)
    if len(payload) > CRC_BYTES and draw(st.booleans()):  # repair the CRC so deeper checks are reached
        struct.pack_into("<I", payload, len(payload) - CRC_BYTES, zlib.crc32(bytes(payload[:-CRC_BYTES])))
    return bytes(payload)


@settings(max_examples=MUTATION_EXAMPLES, **SETTINGS)
@given(mutated())
def test_mutated_payloads_decode_or_get_a_codec_error(data: bytes) -> None:
    _check(data)


@pytest.mark.parametrize("numel", [2**40, 2**62])
def test_a_header_that_lies_about_its_size_allocates_nothing(numel: int) -> None:
    payload = bytearray(PAYLOADS["fp32"])
    struct.pack_into("<Q", payload, 28, numel)
    struct.pack_into("<I", payload, len(payload) - CRC_BYTES, zlib.crc32(bytes(payload[:-CRC_BYTES])))
    with pytest.raises(CodecError):
        decode(bytes(payload))

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Wire format: bit packing, header fields, framing checks, limits, and fuzzing of the decoder."""

from __future__ import annotations

import struct
import time
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lila_codec import CodecError, decode, get_codec, peek_header, wire
from lila_codec.bitpack import pack_codes, packed_nbytes, unpack_codes

FUZZ_EXAMPLES = 150


def _payloads() -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, generator=gen)
    return {
        "fp32": get_codec("fp32").encode(x),
        "fp16": get_codec("fp16").encode(x),
        "int4": get_codec("int4").encode(x, seed=3),
        "int8-dither": get_codec("int8", dither=True, rotation=64).encode(x, seed=4),
        "e8": get_codec("e8", bits=3).encode(x, seed=5),
        "e8-dither": get_codec("e8", bits=2, dither=True).encode(x, seed=6),
        "leech": get_codec("leech", bits=2).encode(x[:, :24], seed=7),
    }


PAYLOADS = _payloads()


def _reseal(body: bytes) -> bytes:
    """Replace the CRC of a payload whose body was edited on purpose (a forged payload)."""
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("bits", range(1, 9))
def test_bitpack_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (8 * 37,), generator=gen, dtype=torch.uint8)
    data = pack_codes(codes, bits)
    assert len(data) == packed_nbytes(codes.numel(), bits) == 37 * bits
    assert torch.equal(unpack_codes(data, codes.numel(), bits), codes)


def test_bitpack_layout_is_little_endian():
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0], dtype=torch.uint8)
    assert pack_codes(codes, 4) == bytes([0x21, 0x43, 0x65, 0x07])
    value = sum(c << (3 * j) for j, c in enumerate(codes.tolist()))
    assert pack_codes(codes, 3) == value.to_bytes(3, "little")
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_codes(torch.zeros(5, dtype=torch.uint8), 4)


def test_header_fields_round_trip():
    payload = get_codec("e8", bits=3, block=128, dither=True).encode(torch.ones(7, 9), seed=123456789)
    h = peek_header(payload)
    assert (h.codec_name, h.bits, h.block, h.rotation, h.seed) == ("e8", 3, 128, 128, 123456789)
    assert h.rotate and h.dither and h.shape == (7, 9) and h.dtype == torch.float32
    assert h.version == wire.WIRE_VERSION
    assert len(payload) == wire.total_nbytes(2, h.scales_nbytes, h.codes_nbytes)
    assert payload[:4] == wire.MAGIC


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_truncation_is_rejected(name):
    payload = PAYLOADS[name]
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            decode(payload[:cut])


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_trailing_bytes_are_rejected(name):
    with pytest.raises(CodecError, match="oversized"):
        decode(PAYLOADS[name] + b"\x00")


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_single_bit_flip_is_rejected(name):
    payload = PAYLOADS[name]
    for byte in range(len(payload)):
        for bit in range(8):
            damaged = bytearray(payload)
            damaged[byte] ^= 1 << bit
            with pytest.raises(CodecError):
                decode(bytes(damaged))


def test_unknown_version_and_magic_are_named():
    payload = bytearray(PAYLOADS["e8"])
    payload[4] = 2
    with pytest.raises(CodecError, match="unsupported wire version 2"):
        decode(_reseal(bytes(payload[:-4])))
    with pytest.raises(CodecError, match="magic"):
        decode(b"XXXX" + PAYLOADS["e8"][4:])
    with pytest.raises(CodecError, match="bytes"):
        decode("not bytes")  # type: ignore[arg-type]


def test_forged_huge_header_is_rejected_without_allocating():
    header = wire.Header(
        codec_id=wire.CODEC_IDS["e8"],
        bits=4,
        flags=wire.FLAG_ROTATE,
        dtype=torch.float32,
        shape=(1 << 33,),
        rotation=64,
        block=64,
        scale_exponent=0,
        seed=0,
        scales_nbytes=0,
        codes_nbytes=0,
    )
    forged = wire.pack_payload(header, b"", b"")
    start = time.perf_counter()
    with pytest.raises(CodecError, match="sections"):
        decode(forged)
    assert time.perf_counter() - start < 1.0
    too_many = wire.pack_payload(
        wire.Header(**{**header.__dict__, "shape": (wire.MAX_ELEMENTS + 1,)}), b"", b""
    )
    with pytest.raises(CodecError, match="limit"):
        decode(too_many)


def test_forged_fields_with_valid_crc_are_rejected():
    body = bytearray(PAYLOADS["e8"][:-4])
    h = peek_header(PAYLOADS["e8"])
    cases = {
        5: (99, "unknown codec id"),  # codec id
        6: (1, "bits"),  # 1 bit per coordinate: not an allowed E8 rate
        7: (0x80, "flag"),  # unknown flag bit
        8: (77, "dtype"),  # dtype code
    }
    for offset, (value, message) in cases.items():
        forged = bytearray(body)
        forged[offset] = value
        with pytest.raises(CodecError, match=message):
            decode(_reseal(bytes(forged)))
    # a NaN block scale
    scales_at = wire.HEADER_BYTES + 8 * len(h.shape)
    forged = bytearray(body)
    forged[scales_at : scales_at + 2] = struct.pack("<e", float("nan"))
    with pytest.raises(CodecError, match="scale"):
        decode(_reseal(bytes(forged)))
    # the fp32 codec refuses non-finite stored values
    fp32_body = bytearray(PAYLOADS["fp32"][:-4])
    fp32_body[-4:] = struct.pack("<f", float("inf"))
    with pytest.raises(CodecError, match="non-finite"):
        decode(_reseal(bytes(fp32_body)))


def test_codec_mismatch_is_reported():
    with pytest.raises(CodecError, match="encoded with codec 'int'"):
        get_codec("e8").decode(PAYLOADS["int4"])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    with pytest.raises(CodecError):
        decode(data)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(PAYLOADS)), st.data())
def test_fuzz_damaged_payloads(name, data):
    payload = bytearray(PAYLOADS[name])
    n_edits = data.draw(st.integers(1, 8))
    for _ in range(n_edits):
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload[pos] = data.draw(st.integers(0, 255).filter(lambda b, p=pos: b != payload[p]))
    cut = data.draw(st.integers(0, len(payload)))
    with pytest.raises(CodecError):
        decode(bytes(payload[:cut]) if cut < len(payload) else bytes(payload))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(PAYLOADS)), st.integers(0, wire.HEADER_BYTES - 1), st.integers(0, 255))
def test_fuzz_forged_headers_never_crash(name, offset, value):
    """A header edit with a recomputed CRC is either rejected with CodecError or decodes to its declared shape."""
    body = bytearray(PAYLOADS[name][:-4])
    body[offset] = value
    try:
        out = decode(_reseal(bytes(body)))
    except CodecError:
        return
    h = peek_header(_reseal(bytes(body)))
    assert tuple(out.shape) == h.shape and out.dtype == h.dtype
    assert bool(torch.isfinite(out.float()).all())

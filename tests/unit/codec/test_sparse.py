# SPDX-License-Identifier: AGPL-3.0-or-later
"""Sparse codecs (chunked top-k, E8 or scalar values): exact round-trip properties, sizes, strict decoding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lila_codec import CodecError, ErrorFeedback, decode, get_codec, wire
from lila_codec.positions import BITMAP, RICE, _rice_pack, decode_positions, encode_positions
from lila_codec.sparse import _SUB, SparseE8Codec, SparseIntCodec, kept_per_chunk

CHUNK, K = 512, 16  # density 1/32 of a small chunk keeps the tests fast
CODECS = [
    ("sparse-e8", {"bits": 1}),
    ("sparse-e8", {"bits": 2}),
    ("sparse-e8", {"bits": 4}),
    ("sparse-int", {"bits": 2}),
    ("sparse-int", {"bits": 2, "values": "folded"}),
    ("sparse-int", {"bits": 4, "rotation": 64}),
]


def codec(name: str, **options: object):
    return get_codec(name, density=K / CHUNK, chunk=CHUNK, **options)


def planted(nchunks: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Noise below 0.5 in magnitude plus K values of magnitude 10..11 per chunk at random positions."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(nchunks, CHUNK, generator=gen) - 0.5) * 0.99  # [nchunks, CHUNK]
    pos = np.sort(
        np.stack([np.random.default_rng(seed + i).choice(CHUNK, K, replace=False) for i in range(nchunks)]), 1
    )
    signs = torch.randint(0, 2, (nchunks, K), generator=gen) * 2 - 1
    big = signs * (10 + torch.rand(nchunks, K, generator=gen))
    x.scatter_(1, torch.from_numpy(pos), big.float())
    return x.reshape(-1), pos  # [nchunks · CHUNK]


@pytest.mark.parametrize(("name", "options"), CODECS)
def test_kept_set_and_zeros_elsewhere(name: str, options: dict) -> None:
    x, pos = planted(6)
    c = codec(name, **options)
    payload, rec = c.encode_with_reconstruction(x, seed=3)
    y = decode(payload)
    assert torch.equal(y, rec)  # the encoder's reconstruction is bitwise the decoder's
    assert torch.equal(c.decode(payload, expected_numel=x.numel()), y)
    if options.get("rotation"):
        assert float((y - x).norm() / x.norm()) < float(x.view(6, CHUNK).abs().topk(K).values.norm()) / float(
            x.norm()
        )
        return
    kept = np.flatnonzero(y.numpy())
    expected = (pos + CHUNK * np.arange(6)[:, None]).reshape(-1)
    assert np.array_equal(kept, expected)
    assert bool((torch.sign(y[kept]) == torch.sign(x[kept])).all())


def test_e8_error_within_covering_radius() -> None:
    """Per 8-vector of kept magnitudes, |error| ≤ s · covering radius of E8 (1): the offset is exact."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8 * CHUNK, generator=gen)
    for bits in (3, 4, 6):
        payload = codec("sparse-e8", bits=bits).encode(x)
        header, scales, _ = wire.parse_payload(payload)
        s = (
            torch.from_numpy(np.frombuffer(scales[: 2 * 8], dtype="<f2").astype(np.float64))
            * 2.0**header.scale_exponent
        )
        y = decode(payload).double().view(8, CHUNK)
        idx = y.abs().topk(K, dim=1).indices.sort(1).values  # the kept positions (no zero was kept)
        err = x.double().view(8, CHUNK).gather(1, idx) - y.gather(1, idx)  # [chunks, K]
        err = err.view(8, 8, K // 8)  # [chunks, 8, m]: vector j is kept values j, j + m, …
        assert bool((err.norm(dim=1) <= s.view(8, 1) * (1 + 1e-6)).all())


@pytest.mark.parametrize("numel", [CHUNK * 3, CHUNK * 3 + 100, 5, 0])
def test_density_per_chunk(numel: int) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(2)) + 3.0  # no zeros
    y = decode(codec("sparse-int", bits=2).encode(x))
    assert y.shape == x.shape
    per_chunk = [int((y[i : i + CHUNK] != 0).sum()) for i in range(0, numel, CHUNK)]
    assert per_chunk == [min(K, len(x[i : i + CHUNK])) for i in range(0, numel, CHUNK)]


def test_deterministic_bytes_and_seed() -> None:
    x = torch.randn(4 * CHUNK, generator=torch.Generator().manual_seed(4))
    for name, options in CODECS:
        c = codec(name, **options)
        assert c.encode(x, seed=9) == c.encode(x, seed=9)
    rotated = codec("sparse-e8", rotation=64)
    assert rotated.encode(x, seed=1) != rotated.encode(x, seed=2)
    assert not torch.equal(decode(rotated.encode(x, seed=1)), decode(rotated.encode(x, seed=2)))


def test_payload_bytes_at_one_percent_two_bits() -> None:
    """Density 0.01 of 4096 keeps 40; positions every 100th coordinate: gaps 3, 99, 99, … Rice b = 6
    (b = 7 ties at the same size; the smaller wins): 40·6 remainder bits + 79 unary bits = 30 + 10 bytes."""
    nchunks = 5
    x = torch.full((nchunks, 4096), 1e-3)
    x[:, 3 : 3 + 100 * 40 : 100] = torch.linspace(1, 2, 40)
    for name, values_bytes, scale_bytes in (("sparse-int", 10, 2), ("sparse-e8", 10, 3)):
        c = get_codec(name, density=0.01, chunk=4096, bits=2)
        assert c.k == kept_per_chunk(0.01, 4096) == 40
        payload = c.encode(x)
        codes = wire.parse_payload(payload)[2]
        assert _SUB.unpack_from(codes)[:2] == (RICE, 6)
        assert len(payload) == wire.total_nbytes(
            2, scale_bytes * nchunks, _SUB.size + (values_bytes + 40) * nchunks
        )
        per_coord = 8 * (scale_bytes + values_bytes + 40) / 4096  # 52 or 53 bytes per chunk of 4096
        assert per_coord == (0.1015625 if name == "sparse-int" else 0.103515625)  # 315× / 309× below fp32
    forced = get_codec("sparse-e8", density=0.01, chunk=4096, bits=2, positions="bitmap").encode(x)
    assert len(forced) == wire.total_nbytes(2, 3 * nchunks, _SUB.size + (10 + 512) * nchunks)
    assert torch.equal(decode(forced), decode(payload))


def test_bitmap_chosen_at_high_density() -> None:
    x = torch.randn(4 * CHUNK, generator=torch.Generator().manual_seed(5))
    payload = get_codec("sparse-int", density=0.5, chunk=CHUNK).encode(x)
    assert _SUB.unpack_from(wire.parse_payload(payload)[2])[0] == BITMAP
    assert int((decode(payload) != 0).sum()) == 2 * CHUNK


def test_error_feedback_keeps_what_was_not_sent() -> None:
    gen = torch.Generator().manual_seed(6)
    ef = ErrorFeedback(codec("sparse-e8", bits=2))
    total_sent = torch.zeros(4 * CHUNK, dtype=torch.float64)
    total_delta = torch.zeros_like(total_sent)
    for seed in range(5):
        delta = torch.randn(4 * CHUNK, generator=gen)
        target = delta + (ef.residual if ef.residual is not None else 0)
        sent = decode(ef.encode(delta, seed=seed))
        off = sent == 0
        assert torch.equal(ef.residual[off], target[off])  # unsent coordinates stay whole in the residual
        total_sent += sent.double()
        total_delta += delta.double()
    assert torch.allclose(total_sent + ef.residual.double(), total_delta, atol=1e-5)


def test_options_are_checked() -> None:
    for bad in (
        {"chunk": 12},
        {"density": 0.0},
        {"bits": 0},
        {"bits": 9},
        {"rotation": 3},
        {"positions": "x"},
        {"chunk": 1 << 17},
        {"density": 1e-4, "chunk": 65536},
    ):
        with pytest.raises(ValueError):
            get_codec("sparse-e8", **bad)
    with pytest.raises(ValueError):
        get_codec("sparse-e8", values="uniform")
    assert isinstance(get_codec("sparse-e8"), SparseE8Codec) and isinstance(
        get_codec("sparse-int"), SparseIntCodec
    )


# ---- strict decoding -------------------------------------------------------------------------------
def _payload(name: str = "sparse-e8", **options: object) -> bytes:
    x, _ = planted(3)
    return codec(name, **options).encode(x, seed=1)


def _forge(
    payload: bytes, *, scales: bytes | None = None, codes: bytes | None = None, **fields: object
) -> bytes:
    """Re-pack a payload with other sections or header fields and a valid CRC."""
    header, s, c = wire.parse_payload(payload)
    s = bytes(s) if scales is None else scales
    c = bytes(c) if codes is None else codes
    header = dataclasses.replace(header, scales_nbytes=len(s), codes_nbytes=len(c), **fields)
    return wire.pack_payload(header, s, c)


def _sub(payload: bytes, **changes: int) -> bytes:
    codes = bytearray(wire.parse_payload(payload)[2])
    values = dict(zip(("method", "rice", "mode", "reserved", "k"), _SUB.unpack_from(codes), strict=True))
    values.update(changes)
    _SUB.pack_into(codes, 0, *values.values())
    return _forge(payload, codes=bytes(codes))


def _refused(payload: bytes, **kwargs: object) -> None:
    with pytest.raises(CodecError):
        decode(payload, **kwargs)


def test_truncations_and_bit_flips() -> None:
    payload = _payload()
    decode(payload)
    for size in range(len(payload)):
        _refused(payload[:size])
    rng = np.random.default_rng(0)
    for bit in rng.choice(8 * len(payload), 64, replace=False):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        _refused(bytes(flipped))


def test_forged_fields_refused() -> None:
    payload = _payload()
    _, scales, codes = wire.parse_payload(payload)
    cases = [
        _sub(payload, k=K + 8),
        _sub(payload, k=K - 8),
        _sub(payload, k=K + 1),
        _sub(payload, k=0),
        _sub(payload, k=CHUNK + 8),
        _sub(payload, k=1 << 31),
        _sub(payload, mode=0),
        _sub(payload, mode=7),
        _sub(payload, reserved=1),
        _sub(payload, method=2),
        _sub(payload, rice=17),
        _sub(payload, method=BITMAP),
        _forge(payload, bits=0),
        _forge(payload, bits=9),
        _forge(payload, block=CHUNK + 4),
        _forge(payload, flags=wire.FLAG_ROTATE),
        _forge(payload, rotation=64),
        _forge(payload, flags=wire.FLAG_DITHER),
        _forge(payload, rotation=CHUNK * 2, flags=wire.FLAG_ROTATE),
        _forge(payload, shape=(3 * CHUNK + 1,)),
        _forge(payload, shape=(1 << 33,)),
        _forge(payload, scales=bytes(scales)[:-1]),
        _forge(payload, scales=bytes(scales) + b"\0"),
        _forge(payload, scales=b"\x00\xfc" + bytes(scales)[2:]),  # fp16 −inf scale
        _forge(payload, scales=b"\x00\xbc" + bytes(scales)[2:]),  # negative scale
        _forge(payload, codes=bytes(codes)[:-1]),
        _forge(payload, codes=bytes(codes) + b"\0"),
        _forge(payload, codes=bytes(codes) + b"\xff"),
        _forge(payload, codes=bytes(codes)[: _SUB.size - 1]),
        _forge(payload, codes=bytes(codes)[: _SUB.size + 4]),
    ]
    for forged in cases:
        _refused(forged)
    _refused(payload, expected_numel=3 * CHUNK + 1)
    _refused(_forge(payload, codec_id=wire.CODEC_IDS["sparse-int"], scales=bytes(scales)[: 2 * 3]))
    with pytest.raises(CodecError):
        get_codec("sparse-int").decode(payload)


def test_forged_positions_refused() -> None:
    payload = _payload()
    header, _, codes = wire.parse_payload(payload)
    value_end = _SUB.size + 3 * K * header.bits // 8
    head = bytes(codes)[:value_end]

    def with_gaps(gaps: np.ndarray, b: int) -> bytes:
        codes = bytearray(head)
        _SUB.pack_into(codes, 0, RICE, b, 1, 0, K)
        return _forge(payload, codes=bytes(codes) + _rice_pack(gaps.astype(np.int64), b))

    ok = np.zeros(3 * K, dtype=np.int64)
    decode(with_gaps(ok, 3))  # positions 0..K−1 of each chunk: valid
    past = ok.copy()
    past[K - 1] = CHUNK - K + 1  # the chunk's last position lands on CHUNK: out of range
    _refused(with_gaps(past, 3))
    huge = ok.copy()
    huge[5] = 10 * CHUNK  # a single gap beyond the chunk (long unary run)
    _refused(with_gaps(huge, 0))
    short = ok[:-1].copy()
    short[0] = 1  # 47 gaps in exactly 48 unary bits: no padding zero can stand in for the missing position
    _refused(with_gaps(short, 0))
    # bitmap: a chunk with one mark too many or too few
    bitmap = np.zeros((3, CHUNK), dtype=np.uint8)
    bitmap[:, :K] = 1
    for extra in ((0, K), (1, K - 1)):
        bad = bitmap.copy()
        bad[extra] ^= 1
        codes_ = bytearray(head)
        _SUB.pack_into(codes_, 0, BITMAP, 0, 1, 0, K)
        _refused(
            _forge(payload, codes=bytes(codes_) + np.packbits(bad.reshape(-1), bitorder="little").tobytes())
        )
    # duplicates cannot be expressed on the wire (gaps are never negative); the encoder refuses them
    with pytest.raises(CodecError):
        encode_positions(np.array([[1, 1, 2, 3, 4, 5, 6, 7]]), CHUNK)
    with pytest.raises(CodecError):
        encode_positions(np.array([[0, 1, 2, 3, 4, 5, 6, CHUNK]]), CHUNK)
    assert np.array_equal(
        decode_positions(
            memoryview(_rice_pack(np.zeros(8, dtype=np.int64), 2)), RICE, 2, nchunks=1, k=8, chunk=CHUNK
        ),
        np.arange(8).reshape(1, 8),
    )


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sparse-e8", {"bits": 2}),
        ("sparse-e8", {"bits": 4, "rotation": 64}),
        ("sparse-int", {"positions": "bitmap"}),
    ],
)
def test_random_forgeries_only_raise_codec_error(name: str, options: dict) -> None:
    """Random byte changes in the sections (with a valid CRC) decode or raise CodecError, nothing else."""
    payload = _payload(name, **options)
    _, scales, codes = wire.parse_payload(payload)
    rng = np.random.default_rng(7)
    for _ in range(150):
        s, c = bytearray(scales), bytearray(codes)
        target = c if rng.random() < 0.8 else s
        for _ in range(int(rng.integers(1, 4))):
            target[int(rng.integers(len(target)))] = int(rng.integers(256))
        if rng.random() < 0.3:
            del c[int(rng.integers(len(c))) :]
        try:
            out = decode(_forge(payload, scales=bytes(s), codes=bytes(c)))
        except CodecError:
            continue
        assert out.shape == (3 * CHUNK,) and bool(torch.isfinite(out).all())

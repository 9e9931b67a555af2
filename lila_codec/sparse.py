# SPDX-License-Identifier: AGPL-3.0-or-later
"""Sparse codecs: chunked top-k of the (optionally rotated) tensor, kept values coded with E8 or scalars.

``sparse-e8`` and ``sparse-int`` keep, in every chunk of ``chunk`` coordinates, the ``k`` of largest
magnitude (k = ``density``·``chunk`` rounded to a multiple of 8, at least 8), like SparseLoCo's chunked
top-k, and send their positions (:mod:`lila_codec.positions`: a bitmap or Rice-coded gaps, whichever is
smaller) and their values at ``bits`` bits each. Everything else decodes to zero; with
:class:`lila_codec.ErrorFeedback` (or the peer's residual) what was not sent stays in the sender's
residual and goes out in a later round.

Values. Top-k values of one chunk sit far from zero with nearly equal magnitudes (on the bench's real
pseudo-gradients the kept values of a chunk vary by a few percent), so a quantizer centred on zero wastes
most of its levels. ``sparse-e8`` therefore sends each value *folded*: its sign (1 bit) and its magnitude
as ``s·(n/4 + v)``, where s is the chunk's fp16 scale, n its 8-bit offset (in quarter scales) and v the
chunk's magnitudes' point of the E8 Voronoi code E8/2^R·E8 at R = ``bits`` − 1 bits per value (the
magnitudes of a chunk grouped into 8-vectors; R = 1 searches the 256 coset leaders exhaustively, R ≥ 2
uses the scale search of :mod:`lila_codec.e8`; R = 0 sends signs and one magnitude per chunk).
``sparse-int`` is the scalar baseline: by default SparseLoCo-style ``uniform`` values (2^bits levels
s·(c − (2^bits − 1)/2) over a searched range), or with ``values="folded"`` the same sign + offset layout
as ``sparse-e8`` with a scalar magnitude quantizer (the fair comparison of E8 against scalars).

Payload (inside the wire format of :mod:`lila_codec.wire`): header ``bits`` = bits per kept value,
``block`` = chunk, ``rotation``/flag = Hadamard size, ``scale_exponent`` = the scales' exponent. Scales
section: one fp16 scale per chunk, then (folded values) one offset byte per chunk. Codes section: an
8-byte sub-header (position coding, Rice parameter, values mode, reserved 0, k as uint32), then the
values (uniform: ``bits``-bit codes; folded: K sign bits then K·(bits − 1) magnitude bits), then the
positions. The decoder checks every length against the header before it allocates, and refuses every
malformed payload with :class:`CodecError`.

Decoding is exact and identical everywhere: each value is an integer t times the chunk's s/4 (the
rotation's ±1 Hadamard applied to the integers in float64, exact), one IEEE rounding to float32 at the end.

Tuning: ``density`` trades traffic for error about linearly (positions cost about log2(1/density) + 1.5
bits per kept value, values ``bits``); ``bits`` beyond 2 buys little at 1 % density because the error is
dominated by what is dropped; ``chunk`` (a multiple of 8, ≤ 65536) sets how locally the top-k adapts and
amortizes the 3-byte per-chunk scale; rotation spreads outliers and usually *hurts* top-k (it makes the
data Gaussian, so the kept 1 % carry less energy). ``python -m bench.codec`` measures every combination
(``sparse`` rows: bytes, round reduction over fp32, error, cosine, speed).
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch

from lila_codec import blockscale, wire
from lila_codec.base import Codec, padded_length
from lila_codec.bitpack import pack_codes, unpack_codes
from lila_codec.e8 import H_OVER_MAX_ABS, decode_points, lattice_coords_mod, voronoi_offset
from lila_codec.errors import CodecError
from lila_codec.hadamard import check_rotation_size, rotate
from lila_codec.positions import (
    BITMAP,
    DENOM,
    RICE,
    decode_positions,
    encode_positions,
)
from lila_codec.positions import (
    SUB_HEADER as _SUB,
)
from lila_codec.positions import (
    place_values as _reconstruct,
)
from lila_model.lattice.e8 import E8_DIM, max_root_inner_cols, nearest_e8_cols

ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
DEFAULT_DENSITY = 0.01
DEFAULT_CHUNK = 4096
DEFAULT_BITS = 2
DEFAULT_SCALE_CANDIDATES = 8
MAX_SCALE_CANDIDATES = 64
MIN_DENSITY = 2.0**-10  # at most 1024 decoded coordinates per kept value (bounds the decoder's expansion)
VALUES_UNIFORM, VALUES_FOLDED = 0, 1
VALUE_MODES = {"uniform": VALUES_UNIFORM, "folded": VALUES_FOLDED}
POSITION_CODINGS = {"auto": None, "bitmap": BITMAP, "rice": RICE}
MAX_OFFSET = 255
OFFSET_BYTES = 1
UNIFORM_LOW = 0.1  # smallest uniform range tried, as a fraction of the chunk's largest magnitude
FOLDED_LOW, FOLDED_HIGH = 0.25, 1.5  # folded scalar/E8-codebook scales tried, as fractions of the spread
E8_SAFE_DELTA = 2.5  # safe δ of the folded E8 search: 2 plus ½ for the offset's rounding (≤ 1/8 a coordinate)


def kept_per_chunk(density: float, chunk: int) -> int:
    """k: ``density``·``chunk`` rounded to a multiple of 8, at least 8, at most ``chunk``."""
    return min(chunk, max(E8_DIM, E8_DIM * round(density * chunk / E8_DIM)))


class _SparseCodec(Codec):
    """Shared plumbing of the sparse codecs (see the module docstring); subclasses quantize magnitudes."""

    value_modes: ClassVar[tuple[int, ...]]
    default_values: ClassVar[str]
    # A mean of top-k payloads is non-zero on the union of their positions and does not fit one payload:
    # peers average these codecs by gathering the contributions themselves (peer.averaging.gather).
    gather: ClassVar[bool] = True

    def __init__(
        self,
        *,
        density: float = DEFAULT_DENSITY,
        chunk: int = DEFAULT_CHUNK,
        bits: int = DEFAULT_BITS,
        rotation: int = 0,
        positions: str = "auto",
        values: str | None = None,
        scale_candidates: int = DEFAULT_SCALE_CANDIDATES,
    ) -> None:
        """Keyword-only options, described on :class:`SparseIntCodec` and :class:`SparseE8Codec`."""
        values = self.default_values if values is None else values
        if not isinstance(chunk, int) or chunk < E8_DIM or chunk % E8_DIM or chunk > wire.MAX_BLOCK:
            raise ValueError(f"{self.name} chunk must be a multiple of 8 in 8..{wire.MAX_BLOCK}, got {chunk}")
        if not MIN_DENSITY <= float(density) <= 1.0:
            raise ValueError(f"{self.name} density must be in {MIN_DENSITY}..1, got {density}")
        if bits not in ALLOWED_BITS:
            raise ValueError(f"{self.name} bits must be one of {ALLOWED_BITS}, got {bits}")
        if rotation:
            check_rotation_size(rotation, chunk)
        if positions not in POSITION_CODINGS:
            raise ValueError(f"positions must be one of {sorted(POSITION_CODINGS)}, got {positions!r}")
        if values not in VALUE_MODES or VALUE_MODES[values] not in self.value_modes:
            raise ValueError(f"{self.name} values must be one of {self._mode_names()}, got {values!r}")
        if not 1 <= scale_candidates <= MAX_SCALE_CANDIDATES:
            raise ValueError(f"scale_candidates must be in 1..{MAX_SCALE_CANDIDATES}, got {scale_candidates}")
        self.density, self.chunk, self.bits = float(density), chunk, bits
        self.rotation, self.positions, self.values = int(rotation), positions, values
        self.scale_candidates = scale_candidates
        self.k = kept_per_chunk(self.density, chunk)
        if self.k * round(1 / MIN_DENSITY) < chunk:
            raise ValueError(
                f"{self.name} keeps {self.k} of {chunk}: below the minimum density {MIN_DENSITY}"
            )

    @classmethod
    def _mode_names(cls) -> list[str]:
        return [name for name, mode in VALUE_MODES.items() if mode in cls.value_modes]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(density={self.density}, chunk={self.chunk}, bits={self.bits}, "
            f"rotation={self.rotation}, positions={self.positions!r}, values={self.values!r})"
        )

    # ---- encoding --------------------------------------------------------------------------
    def encode_with_reconstruction(
        self, tensor: torch.Tensor, *, seed: int = 0
    ) -> tuple[bytes, torch.Tensor]:
        """``(encode(tensor, seed=seed), decode(that payload))`` without decoding: the reconstruction is
        built by the decoder's own arithmetic from the integers the encoder wrote, so it is bitwise equal
        to every receiver's decode (error feedback: residual = tensor − reconstruction)."""
        flat = self._prepare(tensor, seed)
        fields, scales, codes, rec = self._encode_parts(flat, seed)
        header, payload = self._pack(tensor, seed, fields, scales, codes)
        out = rec.reshape(header.shape).to(header.dtype)
        if out.numel() and not bool(torch.isfinite(out).all()):
            raise CodecError(f"the reconstruction overflows {header.dtype}; rescale the tensor")
        return payload, out

    def _encode_flat(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes]:
        fields, scales, codes, _ = self._encode_parts(flat, seed)
        return fields, scales, codes

    def _encode_parts(self, flat: torch.Tensor, seed: int) -> tuple[dict, bytes, bytes, torch.Tensor]:
        numel, chunk, k = flat.numel(), self.chunk, self.k
        length = padded_length(numel, chunk)
        nchunks = length // chunk
        y = flat if length == numel else torch.nn.functional.pad(flat, (0, length - numel))
        if self.rotation and length:
            y = rotate(y, seed=seed, size=self.rotation)
        rows = y.view(nchunks, chunk)  # [nchunks, chunk]
        mag = rows.abs()
        if length != numel:
            mag.view(-1)[
                numel:
            ] = -1.0  # padding is kept last, only when a chunk has fewer than k coordinates
        idx = torch.topk(mag, k, dim=1, sorted=False).indices.sort(dim=1).values  # [nchunks, k]
        vals = rows.gather(1, idx)  # [nchunks, k]
        peak = float(vals.abs().max()) if vals.numel() else 0.0
        exponent = blockscale.choose_scale_exponent(H_OVER_MAX_ABS * peak)
        unit = 2.0**exponent
        mode = VALUE_MODES[self.values]
        if mode == VALUES_UNIFORM:
            s16, codes = self._quantize_uniform(vals, unit)
            offsets = None
            value_bytes = pack_codes(codes.reshape(-1), self.bits)
        else:
            s16, offsets, codes = self._quantize_folded(vals.abs(), unit)
            value_bytes = pack_codes((vals < 0).to(torch.uint8).reshape(-1), 1)
            if self.bits > 1:
                value_bytes += pack_codes(codes.reshape(-1), self.bits - 1)
        t = self._numerators(mode, self.bits, nchunks, k, value_bytes, offsets)
        method, rice_bits, pos_bytes = encode_positions(idx.numpy(), chunk, POSITION_CODINGS[self.positions])
        scale_bytes = blockscale.scales_to_bytes(s16)
        if offsets is not None:
            scale_bytes += offsets.to(torch.uint8).numpy().tobytes()
        s = s16.to(torch.float64) * unit
        rec = _reconstruct(
            t, s, torch.from_numpy(idx.numpy()), numel=numel, chunk=chunk, rotation=self.rotation, seed=seed
        )
        fields = dict(
            bits=self.bits,
            flags=wire.FLAG_ROTATE if self.rotation else 0,
            rotation=self.rotation,
            block=chunk,
            scale_exponent=exponent,
        )
        codes_bytes = _SUB.pack(method, rice_bits, mode, 0, k) + value_bytes + pos_bytes
        return fields, scale_bytes, codes_bytes, rec

    def _scale_grid(self, low: float, high: float) -> torch.Tensor:
        return (
            torch.linspace(low, high, self.scale_candidates)
            if self.scale_candidates > 1
            else torch.tensor([high])
        )

    def _quantize_uniform(self, vals: torch.Tensor, unit: float) -> tuple[torch.Tensor, torch.Tensor]:
        """fp16 scales ``[n]`` and codes ``[n, k]`` (uint8 in 0..2^bits − 1) of levels s·(c − (2^bits − 1)/2)."""
        half = ((1 << self.bits) - 1) / 2
        amax, mean = vals.abs().amax(1), vals.abs().mean(1)  # [n]
        # the searched ranges (fractions of the largest magnitude) and the 1-bit optimum (mean magnitude)
        ranges = [amax * f for f in self._scale_grid(UNIFORM_LOW, 1.0).tolist()] + [mean * half]
        best = None
        for top in ranges:
            s16 = blockscale.fp16_round_up(top / (half * unit))
            s = (s16.to(torch.float32) * unit).unsqueeze(1)  # [n, 1]
            c = torch.round(vals / torch.where(s > 0, s, torch.ones_like(s)) + half).clamp_(0, 2 * half)
            err = (vals - s * (c - half)).square().sum(1)  # [n]
            best = _keep_better(best, err, s16, c)
        return best[1], best[2].to(torch.uint8)

    def _quantize_folded(
        self, a: torch.Tensor, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fp16 scales ``[n]``, offsets ``[n]`` (quarter scales, 0..255) and magnitude codes of ``a[n, k]``."""
        mean = a.mean(1)  # [n]
        if self.bits == 1:
            s16 = blockscale.fp16_round_up(mean / unit)
            return s16, torch.full_like(mean, DENOM, dtype=torch.int64), torch.zeros(0, dtype=torch.uint8)
        return self._quantize_magnitudes(a, mean, unit)

    def _quantize_magnitudes(
        self, a: torch.Tensor, mean: torch.Tensor, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scalar magnitudes (sparse-int, values="folded"): levels s·(n/4 + c − (2^M − 1)/2), M = bits − 1."""
        half = ((1 << (self.bits - 1)) - 1) / 2
        spread = (a - mean.unsqueeze(1)).abs().amax(1)  # [n]
        best = None
        for s_try in _folded_scales(spread, mean, self._scale_grid(FOLDED_LOW, FOLDED_HIGH), 2 * half + 1):
            s16 = blockscale.fp16_round_up(s_try / unit)
            s = (s16.to(torch.float32) * unit).unsqueeze(1)  # [n, 1]
            n_off = _offsets(mean.unsqueeze(1), s)  # [n, 1]
            c = torch.round(a / torch.where(s > 0, s, torch.ones_like(s)) - n_off / DENOM + half).clamp_(
                0, 2 * half
            )
            err = (a - s * (n_off / DENOM + c - half)).square().sum(1)  # [n]
            best = _keep_better(best, err, s16, n_off.squeeze(1), c)
        return best[1], best[2].to(torch.int64), best[3].to(torch.uint8)

    # ---- decoding --------------------------------------------------------------------------
    @classmethod
    def _validate_header(cls, header: wire.Header) -> None:
        if header.bits not in ALLOWED_BITS:
            raise CodecError(
                f"{cls.name} payload declares {header.bits} bits per value; allowed: {ALLOWED_BITS}"
            )
        if header.block < E8_DIM or header.block % E8_DIM:
            raise CodecError(f"{cls.name} payload declares chunk {header.block}; it must be a multiple of 8")
        if header.dither:
            raise CodecError(f"{cls.name} payload sets the dither flag; sparse codecs have no dither")
        if header.rotate != bool(header.rotation):
            raise CodecError(
                f"{cls.name} payload: rotation flag {header.rotate} disagrees with rotation {header.rotation}"
            )
        if header.rotation:
            try:
                check_rotation_size(header.rotation, header.block)
            except ValueError as exc:
                raise CodecError(f"{cls.name} payload header: {exc}") from None
        if header.codes_nbytes < _SUB.size:
            raise CodecError(
                f"{cls.name} codes section of {header.codes_nbytes} bytes lacks its {_SUB.size}-byte sub-header"
            )

    @classmethod
    def _decode_flat(cls, header: wire.Header, scales: memoryview, codes: memoryview) -> torch.Tensor:
        chunk, bits = header.block, header.bits
        nchunks = padded_length(header.numel, chunk) // chunk
        method, rice_bits, mode, reserved, k = _SUB.unpack_from(codes, 0)
        if mode not in cls.value_modes:
            raise CodecError(
                f"{cls.name} payload declares values mode {mode}; this codec reads {cls.value_modes}"
            )
        if reserved:
            raise CodecError(f"{cls.name} sub-header reserved byte is {reserved}, must be 0")
        if not E8_DIM <= k <= chunk or k % E8_DIM or k * round(1 / MIN_DENSITY) < chunk:
            raise CodecError(
                f"{cls.name} payload keeps k={k} of a chunk of {chunk}: k must be a multiple of 8 "
                f"in 8..{chunk} and at least {MIN_DENSITY} of the chunk"
            )
        per_chunk = blockscale.SCALE_BYTES + (OFFSET_BYTES if mode == VALUES_FOLDED else 0)
        if len(scales) != nchunks * per_chunk:
            raise CodecError(
                f"{cls.name} scales section has {len(scales)} bytes, {nchunks} chunks need "
                f"{nchunks * per_chunk}"
            )
        count = nchunks * k
        value_nbytes = count * bits // 8
        if len(codes) < _SUB.size + value_nbytes:
            raise CodecError(
                f"{cls.name} codes section of {len(codes)} bytes is shorter than its {count} values"
            )
        s = blockscale.scales_from_bytes(
            scales[: nchunks * blockscale.SCALE_BYTES], nchunks, header.scale_exponent
        )
        offsets = None
        if mode == VALUES_FOLDED:
            offsets = torch.from_numpy(
                np.frombuffer(scales[nchunks * blockscale.SCALE_BYTES :], dtype=np.uint8).astype(np.int64)
            )
        values = codes[_SUB.size : _SUB.size + value_nbytes]
        t = cls._numerators(mode, bits, nchunks, k, values, offsets)
        pos = decode_positions(
            codes[_SUB.size + value_nbytes :], method, rice_bits, nchunks=nchunks, k=k, chunk=chunk
        )
        return _reconstruct(
            t,
            s,
            torch.from_numpy(pos),
            numel=header.numel,
            chunk=chunk,
            rotation=header.rotation,
            seed=header.seed,
        )

    @classmethod
    def _numerators(
        cls,
        mode: int,
        bits: int,
        nchunks: int,
        k: int,
        values: bytes | memoryview,
        offsets: torch.Tensor | None,
    ) -> torch.Tensor:
        """Integers t ``[nchunks, k]`` (int64) of the kept values (value = t · s / DENOM) from the values section."""
        count = nchunks * k
        if mode == VALUES_UNIFORM:
            c = unpack_codes(values, count, bits).to(torch.int64).view(nchunks, k)  # [nchunks, k]
            return 2 * (2 * c - ((1 << bits) - 1))
        sign_nbytes = count // 8
        negative = unpack_codes(values[:sign_nbytes], count, 1).to(torch.int64)
        negative = negative.view(nchunks, k)  # [nchunks, k]
        assert offsets is not None
        magnitude = offsets.view(nchunks, 1).expand(nchunks, k)
        if bits > 1:
            codes = unpack_codes(values[sign_nbytes:], count, bits - 1)
            magnitude = magnitude + cls._magnitude_numerators(codes, nchunks, k, bits - 1)
        return magnitude * (1 - 2 * negative)

    @classmethod
    def _magnitude_numerators(cls, codes: torch.Tensor, nchunks: int, k: int, mbits: int) -> torch.Tensor:
        """DENOM · (level − (2^M − 1)/2) ``[nchunks, k]`` int64 of scalar magnitude codes (flat uint8)."""
        c = codes.to(torch.int64).view(nchunks, k)  # [nchunks, k]
        return DENOM * c - (DENOM // 2) * ((1 << mbits) - 1)

    # ---- sizes -----------------------------------------------------------------------------
    def section_nbytes(self, numel: int) -> tuple[int, int]:
        """(scales, codes) sizes with the *bitmap* position coding: an upper bound, since the encoder keeps the
        smaller coding (Rice is about 8 bits per kept value at 1 % density; measure with ``len(payload)``)."""
        nchunks = padded_length(numel, self.chunk) // self.chunk
        per_chunk = blockscale.SCALE_BYTES + (OFFSET_BYTES if self.values == "folded" else 0)
        count = nchunks * self.k
        return nchunks * per_chunk, _SUB.size + count * self.bits // 8 + nchunks * self.chunk // 8


def _keep_better(best: tuple | None, err: torch.Tensor, *fields: torch.Tensor) -> tuple:
    """(err, *fields) keeping, per chunk (dim 0), the candidate with the smaller error (the earlier on ties)."""
    if best is None:
        return (err, *fields)
    better = err < best[0]
    out = [torch.where(better, err, best[0])]
    for new, old in zip(fields, best[1:], strict=True):
        out.append(torch.where(better.view(-1, *([1] * (new.dim() - 1))), new, old))
    return tuple(out)


def _offsets(mean: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The chunk offset in quarter scales, round(4·mean/s) clamped to 0..255 (0 where s is 0), float."""
    return torch.round(DENOM * mean / torch.where(s > 0, s, torch.ones_like(s)) * (s > 0)).clamp_(
        0, MAX_OFFSET
    )


def _folded_scales(
    spread: torch.Tensor, mean: torch.Tensor, grid: torch.Tensor, levels: float
) -> list[torch.Tensor]:
    """Candidate scales ``[n]`` for folded magnitudes: fractions of the spread per level, plus the smallest
    scale whose offset still reaches the mean (for chunks of nearly equal magnitudes)."""
    return [spread * (2 * f / levels) for f in grid.tolist()] + [mean * (DENOM / MAX_OFFSET)]


class SparseIntCodec(_SparseCodec):
    """Chunked top-k with scalar values: the SparseLoCo-style baseline (see the module docstring).

    Options (keyword-only): ``density`` (fraction kept per chunk, 2^-10..1, default 0.01; 0.01–0.03 is the
    SparseLoCo range), ``chunk`` (coordinates per top-k chunk, a multiple of 8 up to 65536, default 4096),
    ``bits`` (1–8 per kept value, default 2), ``rotation`` (Hadamard size dividing the chunk, 0 = off,
    default), ``positions`` (``auto`` keeps the smaller of ``bitmap`` and ``rice``; forcing one is for
    measurements), ``values`` (``uniform``: SparseLoCo's 2^bits levels over a searched symmetric range;
    ``folded``: sign + offset + scalar magnitude, the layout ``sparse-e8`` uses), ``scale_candidates``
    (scales tried per chunk, default 8: more is a small gain at 4 bits and up). ``python -m bench.codec``
    measures it next to ``sparse-e8``.
    """

    name = "sparse-int"
    value_modes = (VALUES_UNIFORM, VALUES_FOLDED)
    default_values = "uniform"


class SparseE8Codec(_SparseCodec):
    """Chunked top-k with each kept value sent as sign + chunk offset + E8-coded magnitude (module docstring).

    Options (keyword-only) as :class:`SparseIntCodec` (``values`` can only be ``folded``): ``bits`` per kept value
    is 1 sign bit plus R = bits − 1 bits of the E8 Voronoi code E8/2^R·E8 of the chunk's magnitudes (grouped
    into 8-vectors); bits 1 sends only signs and one magnitude per chunk, bits 2 searches the 256 coset
    leaders of E8/2E8 exhaustively, bits ≥ 3 uses the Voronoi code with ``scale_candidates`` scales per chunk
    (the last one always safe: no overload, ever). ``python -m bench.codec`` measures 1, 2 and 4 bits.
    """

    name = "sparse-e8"
    value_modes = (VALUES_FOLDED,)

    default_values = "folded"

    def _quantize_magnitudes(
        self, a: torch.Tensor, mean: torch.Tensor, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fp16 scales ``[n]``, offsets ``[n]`` and E8 codes ``[n, 8, m]`` of magnitudes ``a[n, k]`` (k = 8m)."""
        n, k = a.shape
        vectors = a.view(n, E8_DIM, k // E8_DIM)  # [n, 8, m]: vector j is values {j, j + m, …, j + 7m}
        spread = (a - mean.unsqueeze(1)).abs().amax(1)  # [n]
        if self.bits == 2:
            return self._codebook_search(vectors, mean, spread, unit)
        q = 1 << (self.bits - 1)
        ac = vectors.transpose(0, 1)  # [8, n, m] coordinate-major for the E8 kernels
        h_centred = max_root_inner_cols(ac - mean.view(1, n, 1)).amax(-1)  # [n]
        tries = [
            (h_centred / (q - d), True)
            for d in torch.linspace(0.0, E8_SAFE_DELTA, self.scale_candidates).tolist()
        ]
        tries.append((mean * (DENOM / MAX_OFFSET), True))
        # safe: no offset, h(a/s) ≤ q − 2, so rounding stays strictly inside the decoder's region
        tries.append((max_root_inner_cols(ac).amax(-1) / (q - 2), False))
        off = voronoi_offset()
        best = None
        for s_try, with_offset in tries:
            s16 = blockscale.fp16_round_up(s_try / unit)
            s = s16.to(torch.float32) * unit  # [n]
            n_off = _offsets(mean, s) if with_offset else torch.zeros_like(mean)  # [n]
            sb = s.view(1, n, 1)
            z = ac / torch.where(sb > 0, sb, torch.ones_like(sb)) - (n_off / DENOM).view(1, n, 1)
            v = nearest_e8_cols(z)  # [8, n, m]
            inside = (max_root_inner_cols(v - off) < q).all(-1)  # [n]
            err = (ac - sb * (v + (n_off / DENOM).view(1, n, 1))).square().sum(-1).sum(0)  # [n]
            err = torch.where(inside, err, torch.full_like(err, float("inf")))
            best = _keep_better(best, err, s16, n_off, v.transpose(0, 1))
        if not bool(torch.isfinite(best[0]).all()):
            raise CodecError("internal: no in-range scale for a chunk's magnitudes (please report this)")
        codes = lattice_coords_mod(best[3].transpose(0, 1), q).to(torch.uint8).transpose(0, 1)  # [n, 8, m]
        return best[1], best[2].to(torch.int64), codes

    def _codebook_search(
        self, vectors: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor, unit: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """R = 1: the nearest of the 256 coset leaders of E8/2E8 for every magnitude vector, best scale per chunk."""
        n = vectors.shape[0]
        leaders = _coset_leaders()  # [256, 8]
        norms = leaders.square().sum(1)  # [256]
        yv = vectors.transpose(1, 2)  # [n, m, 8]
        best = None
        for s_try in _folded_scales(spread, mean, self._scale_grid(FOLDED_LOW, FOLDED_HIGH), 2.0):
            s16 = blockscale.fp16_round_up(s_try / unit)
            s = s16.to(torch.float32) * unit  # [n]
            n_off = _offsets(mean, s)  # [n]
            sb = s.view(n, 1, 1)
            z = yv / torch.where(sb > 0, sb, torch.ones_like(sb)) - (n_off / DENOM).view(n, 1, 1)
            j = (norms - 2.0 * (z @ leaders.T)).argmin(-1)  # [n, m]
            err = (yv - sb * (leaders[j] + (n_off / DENOM).view(n, 1, 1))).square().sum((1, 2))  # [n]
            best = _keep_better(best, err, s16, n_off, j)
        shifts = torch.arange(E8_DIM).view(1, E8_DIM, 1)
        codes = ((best[3].unsqueeze(1) >> shifts) & 1).to(torch.uint8)  # [n, 8, m]: lattice coordinates mod 2
        return best[1], best[2].to(torch.int64), codes

    @classmethod
    def _magnitude_numerators(cls, codes: torch.Tensor, nchunks: int, k: int, mbits: int) -> torch.Tensor:
        """DENOM · (E8 Voronoi representative) ``[nchunks, k]`` int64 of magnitude codes (flat uint8)."""
        codes = codes.view(nchunks, E8_DIM, k // E8_DIM)  # [n, 8, m]
        points = decode_points(codes, 1 << mbits)  # [n, 8, m], multiples of ½
        return torch.round(points * DENOM).to(torch.int64).reshape(nchunks, k)


@lru_cache(maxsize=1)
def _coset_leaders() -> torch.Tensor:
    """The decoder's representatives of the 256 cosets of E8/2E8, ``[256, 8]``: row j has the code bits of j."""
    j = torch.arange(256)
    shifts = torch.arange(E8_DIM).view(1, E8_DIM, 1)
    codes = ((j.view(1, 1, 256) >> shifts) & 1).to(torch.uint8)  # [1, 8, 256]
    return decode_points(codes, 2)[0].T.contiguous()  # [256, 8]

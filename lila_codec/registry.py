# SPDX-License-Identifier: AGPL-3.0-or-later
"""Codec names and construction: ``get_codec(name, **options)`` and ``decode(payload)``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lila_codec import wire
from lila_codec.base import Codec, check_numel
from lila_codec.e8 import E8Codec
from lila_codec.errors import CodecError
from lila_codec.leech import LeechCodec
from lila_codec.scalar import Fp16Codec, Fp32Codec, IntCodec
from lila_codec.sparse import SparseE8Codec, SparseIntCodec


def _int_codec(bits: int) -> Callable[..., Codec]:
    def make(**options: object) -> Codec:
        if "bits" in options:
            raise ValueError(f"int{bits} has a fixed width; use get_codec('int', bits=...) for other widths")
        return IntCodec(bits=bits, **options)  # type: ignore[arg-type]

    return make


def _factories() -> dict[str, Callable[..., Codec]]:
    return {
        "fp32": Fp32Codec,
        "fp16": Fp16Codec,
        "int8": _int_codec(8),
        "int4": _int_codec(4),
        "int": IntCodec,
        "e8": E8Codec,
        "leech": LeechCodec,
        "sparse-e8": SparseE8Codec,
        "sparse-int": SparseIntCodec,
    }


CODEC_NAMES = ("fp32", "fp16", "int8", "int4", "int", "e8", "leech", "sparse-e8", "sparse-int")
_CLASSES: dict[int, type[Codec]] = {
    wire.CODEC_IDS["fp32"]: Fp32Codec,
    wire.CODEC_IDS["fp16"]: Fp16Codec,
    wire.CODEC_IDS["int"]: IntCodec,
    wire.CODEC_IDS["e8"]: E8Codec,
    wire.CODEC_IDS["leech"]: LeechCodec,
    wire.CODEC_IDS["sparse-e8"]: SparseE8Codec,
    wire.CODEC_IDS["sparse-int"]: SparseIntCodec,
}


def get_codec(name: str, **options: object) -> Codec:
    """A codec by name with its keyword options.

    Names: ``fp32``, ``fp16``, ``int8``, ``int4`` (options ``block``, ``scale_candidates``,
    ``rotation``, ``dither``), ``int`` (plus ``bits``), ``e8`` (``bits`` in 2..8, ``block``,
    ``rotation``, ``dither``, ``scale_candidates``, ``compile``), ``leech`` (likewise),
    ``sparse-e8`` and ``sparse-int`` (chunked top-k: ``density``, ``chunk``, ``bits`` per kept value,
    ``rotation``, ``positions``, ``scale_candidates``; ``sparse-int`` also ``values``).
    Unknown names or options raise ValueError naming the valid ones.
    """
    factories = _factories()
    if name not in factories:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODEC_NAMES)}")
    try:
        return factories[name](**options)
    except TypeError as exc:
        raise ValueError(f"bad options {sorted(options)} for codec {name!r}: {exc}") from None


def decode(payload: bytes | bytearray | memoryview, *, expected_numel: int | None = None) -> torch.Tensor:
    """Decode any codec's payload (the header names the codec). Raises CodecError on any problem;
    ``expected_numel`` refuses another declared element count before decoding (see ``Codec.decode``)."""
    header, scales, codes = wire.parse_payload(payload)
    check_numel(header, expected_numel)
    cls = _CLASSES.get(header.codec_id)
    if cls is None:  # parse_payload already rejects unknown ids; kept for safety
        raise CodecError(f"unknown codec id {header.codec_id}")
    return cls.decode_parsed(header, scales, codes)

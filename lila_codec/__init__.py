# SPDX-License-Identifier: AGPL-3.0-or-later
"""Lattice (E8, Leech) and scalar codecs of tensors, the wire format, error feedback, weight export.

Use ``get_codec(name, **options)``; ``codec.encode(tensor, *, seed=0) -> bytes`` and
``codec.decode(payload) -> Tensor`` (or :func:`decode` for a payload of any codec).
Every decoding failure raises :class:`CodecError`.

Integration with the averaging layer (decision): the codec does **not** plug into
hivemind's ``CompressionBase``. hivemind decodes tensors by a fixed protobuf enum of six
compression names through a module-global table, so a custom codec only works by
overwriting that global on every peer before the averager forks, and its reducer
re-encodes returned deltas, so lossy codecs make peers drift apart (each applies
``local + decompress(avg − local)`` and its own slice is never compressed). Instead the
peer encodes its (error-feedback-corrected) pseudo-gradient with this package, carries
the payloads as opaque bytes through its own all-reduce, and every peer decodes them
here. For that use:

* encode a flat float32 vector, or any slice of it, and decode it anywhere: decoding
  reads every parameter from the payload's header;
* decoding is deterministic and bitwise identical on every machine for the same bytes
  (integer-exact lattice arithmetic and Hadamard transform, one IEEE rounding at the
  end), so all peers apply exactly the same averaged update;
* :class:`ErrorFeedback` keeps the sender's residual so nothing is lost over rounds.

This package imports neither hivemind nor grpc.
"""

from lila_codec.base import Codec
from lila_codec.e8 import E8Codec
from lila_codec.error_feedback import ErrorFeedback
from lila_codec.errors import CodecError
from lila_codec.leech import LeechCodec
from lila_codec.registry import CODEC_NAMES, decode, get_codec
from lila_codec.scalar import Fp16Codec, Fp32Codec, IntCodec
from lila_codec.sparse import SparseE8Codec, SparseIntCodec
from lila_codec.wire import WIRE_VERSION, Header, peek_header

__all__ = [
    "CODEC_NAMES",
    "WIRE_VERSION",
    "Codec",
    "CodecError",
    "E8Codec",
    "ErrorFeedback",
    "Fp16Codec",
    "Fp32Codec",
    "Header",
    "IntCodec",
    "LeechCodec",
    "SparseE8Codec",
    "SparseIntCodec",
    "decode",
    "get_codec",
    "peek_header",
]

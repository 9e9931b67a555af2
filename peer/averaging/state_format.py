# SPDX-License-Identifier: AGPL-3.0-or-later
"""Named tensors + JSON metadata as one raw byte payload with a table and a sha256 (no pickle).

``pack_state`` lays the tensors out back to back (each at an offset aligned to ``ALIGN_BYTES``) and
returns a JSON-able table ``{"metadata", "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}],
"total_bytes", "sha256"}``; the digest covers the canonical JSON of metadata and table followed by the
payload. ``unpack_state`` checks the digest, the table (known dtypes, sizes that match shapes, in-bounds
and non-overlapping ranges, unique names) and optionally the expected shapes before building tensors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

ALIGN_BYTES = 64
MAX_NAME_CHARS = 512
MAX_DIMS = 8
NAME_PATTERN = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII without spaces

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_ITEMSIZE = max(torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values())


class StateFormatError(ValueError):
    """A state payload or its table is corrupt, incomplete or not what the caller expects."""


@dataclass(frozen=True)
class StateSnapshot:
    """What a donor serves: named tensors (CPU) and JSON-able metadata such as ``{"outer_step": 12}``."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def _digest(metadata: Any, table: list[dict[str, Any]], payload: bytes | memoryview) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps({"metadata": metadata, "tensors": table}, sort_keys=True, separators=(",", ":")).encode()
    )
    digest.update(payload)
    return digest.hexdigest()


def pack_state(snapshot: StateSnapshot) -> tuple[dict[str, Any], bytes]:
    """Serialize ``snapshot``; returns ``(table, payload)``."""
    metadata = json.loads(json.dumps(snapshot.metadata, allow_nan=False))  # must be plain JSON
    table: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, tensor in snapshot.tensors.items():
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"tensor name {name[:40]!r} must be 1-{MAX_NAME_CHARS} printable ASCII characters"
            )
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; supported: {sorted(DTYPES)}")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # [numel]
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        padding = (-offset) % ALIGN_BYTES
        if padding:
            chunks.append(bytes(padding))
            offset += padding
        table.append(
            {
                "name": name,
                "dtype": DTYPE_NAMES[tensor.dtype],
                "shape": list(tensor.shape),
                "offset": offset,
                "nbytes": len(raw),
            }
        )
        chunks.append(raw)
        offset += len(raw)
    payload = b"".join(chunks)
    header = {
        "metadata": metadata,
        "tensors": table,
        "total_bytes": len(payload),
        "sha256": _digest(metadata, table, payload),
    }
    return header, payload


def max_packed_nbytes(expected_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Largest payload a state of these tensors can pack to: each in the widest supported dtype
    (``MAX_ITEMSIZE`` bytes) plus its alignment padding. A downloader that knows its own model's shapes
    refuses a larger announcement before reading (let alone allocating) a byte of it."""
    return sum(math.prod(shape) * MAX_ITEMSIZE + ALIGN_BYTES for shape in expected_shapes.values())


def check_table(
    header: Mapping[str, Any],
    payload_len: int,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[tuple[str, torch.dtype, tuple[int, ...], int, int]]:
    """Check a state table against the announced payload length, before the payload is read.

    Every entry must be valid (known dtype, ``nbytes`` matching its shape, aligned, in bounds), names
    unique, ranges disjoint, the payload no longer than its tensors plus alignment padding, and with
    ``expected_shapes`` the tensors exactly those. Returns ``(name, dtype, shape, offset, nbytes)`` per
    entry; raises StateFormatError naming the first problem."""
    metadata, table = header.get("metadata"), header.get("tensors")
    if not isinstance(metadata, dict) or not isinstance(table, list):
        raise StateFormatError("state header needs a 'metadata' object and a 'tensors' list")
    if header.get("total_bytes") != payload_len:
        raise StateFormatError(
            f"state payload has {payload_len} bytes, the header announced {header.get('total_bytes')}"
        )
    entries = [_check_entry(entry, payload_len) for entry in table]
    names = [entry[0] for entry in entries]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise StateFormatError(f"tensor {twice!r} appears twice in the state table")
    ranges = sorted((offset, offset + nbytes, name) for name, _, _, offset, nbytes in entries)
    for (_, stop, first), (start, _, second) in itertools.pairwise(ranges):
        if start < stop:
            raise StateFormatError(f"tensors {first!r} and {second!r} overlap in the state payload")
    packed = sum(entry[4] for entry in entries) + (ALIGN_BYTES - 1) * len(entries)
    if payload_len > packed:
        raise StateFormatError(
            f"state payload of {payload_len} bytes is larger than its tensors ({packed} bytes with padding)"
        )
    if expected_shapes is not None:
        _check_expected({name: shape for name, _, shape, _, _ in entries}, expected_shapes)
    return entries


def unpack_state(
    header: Mapping[str, Any],
    payload: bytes | bytearray,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> StateSnapshot:
    """Verify and rebuild a snapshot; raises StateFormatError naming the first problem.

    The tensors are views of one writable buffer: ``payload`` itself when it is a ``bytearray`` (what a
    download returns: no copy at all), else one copy of it."""
    entries = check_table(header, len(payload), expected_shapes=expected_shapes)
    if header.get("sha256") != _digest(header["metadata"], header["tensors"], payload):
        raise StateFormatError("state sha256 does not match: the transfer was corrupted or truncated")
    buffer = payload if isinstance(payload, bytearray) else bytearray(payload)
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, offset, nbytes in entries:
        if nbytes:
            raw = torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes, offset=offset)  # [nbytes]
        else:
            raw = torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)  # [nbytes] bytes -> shape
    return StateSnapshot(tensors=tensors, metadata=header["metadata"])


def _check_entry(entry: Any, payload_len: int) -> tuple[str, torch.dtype, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise StateFormatError("every state table entry must be an object")
    name, dtype_name, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    if not (isinstance(name, str) and NAME_PATTERN.match(name)):
        raise StateFormatError(f"state table has an invalid tensor name {str(name)[:40]!r}")
    if dtype_name not in DTYPES:
        raise StateFormatError(f"tensor {name!r} has unsupported dtype {str(dtype_name)[:20]!r}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise StateFormatError(f"tensor {name!r} has an invalid shape")
    for label, value in (("offset", offset), ("nbytes", nbytes)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise StateFormatError(f"tensor {name!r} has an invalid {label}")
    dtype = DTYPES[dtype_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if math.prod(shape) * itemsize != nbytes:
        raise StateFormatError(
            f"tensor {name!r}: shape {shape} of {dtype_name} needs {math.prod(shape) * itemsize} bytes, table says {nbytes}"
        )
    if offset + nbytes > payload_len:
        raise StateFormatError(f"tensor {name!r} runs past the end of the state payload")
    if offset % ALIGN_BYTES:
        raise StateFormatError(f"tensor {name!r} starts at offset {offset}, not a multiple of {ALIGN_BYTES}")
    return name, dtype, tuple(shape), offset, nbytes


def _check_expected(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise StateFormatError(
            f"state tensors differ from the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise StateFormatError(
                f"tensor {name!r} has shape {tuple(shapes[name])}, the model needs {tuple(shape)}"
            )

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Compact weight export of a LilaLM and loading of either an export file or a checkpoint.

Every 2-D weight matrix (embeddings included) is quantized with the chosen codec; the
other parameters (norm gains, biases, scalars) stay float32 (float16 for ``fp16``
exports), and buffers are stored bit-exactly. The file is::

    b"LILAEXP1" | u64 little-endian JSON length | JSON header | blob

The JSON header holds the model config, the checkpoint's extra data, the quantization
settings, one entry per tensor (name, kind, offset and length in the blob, shape,
dtype) and the blob's sha256. Quantized tensors are codec payloads (with their own CRC32,
see :mod:`lila_codec.wire`); raw tensors are little-endian bytes.

:func:`load_model` takes a checkpoint directory or an export file and returns
``(LilaLM, meta)``: ``meta`` is the checkpoint's extra data (so ``meta["tokenizer"]``
works for both), plus ``meta["export"]`` (quantization settings and sizes) for exports.

Tuning: ``e8`` at 4 bits (4.25 bits per weight with block 64) is close to lossless for
small models; fewer bits make a smaller file at a growing cost in bpb, 2 bits being the
least that stays usable; ``int4``/``int8``/``fp16`` are the scalar references.
``scale_candidates`` is raised (8 for e8, 16 for int) because export is offline and each
extra candidate buys a little accuracy. ``python -m bench.export`` measures the file size
and the bpb of every setting against the fp32 checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lila_codec import e8
from lila_codec.base import Codec
from lila_codec.errors import CodecError, ExportError
from lila_codec.registry import decode, get_codec

logger = logging.getLogger(__name__)

EXPORT_MAGIC = b"LILAEXP1"
EXPORT_FORMAT_VERSION = 1
_LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 64 << 20  # a JSON header above this is certainly corrupt
QUANT_CHOICES = ("e8", "int4", "int8", "fp16")
DEFAULT_BITS = e8.DEFAULT_BITS
EXPORT_SCALE_CANDIDATES = 8  # offline: spend more encoder time for accuracy
INT_EXPORT_SCALE_CANDIDATES = 16
BYTES_PER_FP32 = 4


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote."""

    path: Path
    file_bytes: int
    fp32_bytes: int
    quantized_params: int
    total_params: int
    bits_per_quantized_weight: float

    @property
    def compression(self) -> float:
        """fp32 size of the weights over the file size."""
        return self.fp32_bytes / self.file_bytes


def matrix_codec(quant: str, bits: int) -> Codec:
    """The codec used for 2-D weight matrices of an export with these settings."""
    if quant == "e8":
        return get_codec("e8", bits=bits, scale_candidates=EXPORT_SCALE_CANDIDATES)
    if quant in ("int4", "int8"):
        return get_codec(quant, scale_candidates=INT_EXPORT_SCALE_CANDIDATES)
    if quant == "fp16":
        return get_codec("fp16")
    raise ValueError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_CHOICES)}")


def export_model(
    source: str | Path | torch.nn.Module,
    out: str | Path,
    *,
    quant: str = "e8",
    bits: int = DEFAULT_BITS,
    extra: dict[str, Any] | None = None,
    seed: int = 0,
) -> ExportReport:
    """Quantize a model (or a checkpoint directory) and write one export file to ``out``."""
    from lila_model.checkpoint import load_checkpoint
    from lila_model.model import LilaLM

    if isinstance(source, str | Path):
        model, ckpt_extra = load_checkpoint(source)
        extra = ckpt_extra if extra is None else extra
    else:
        model = getattr(source, "_orig_mod", source)
    if not isinstance(model, LilaLM):
        raise TypeError(
            f"export_model expects a LilaLM or a checkpoint directory, got {type(model).__name__}"
        )
    codec = matrix_codec(quant, bits)
    small = get_codec("fp16" if quant == "fp16" else "fp32")
    params = dict(model.named_parameters())
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    quantized = total = fp32_bytes = 0
    for index, (name, tensor) in enumerate(model.state_dict().items()):
        tensor = tensor.detach().cpu()
        total += tensor.numel() if name in params else 0
        fp32_bytes += tensor.numel() * BYTES_PER_FP32 if name in params else 0
        if name in params and tensor.is_floating_point():
            chosen = codec if tensor.dim() == 2 else small
            data = chosen.encode(tensor, seed=seed + index)
            kind = "codec"
            quantized += tensor.numel() if chosen is codec else 0
        else:
            data = _raw_bytes(tensor)
            kind = "raw"
        entries.append(
            {
                "name": name,
                "kind": kind,
                "offset": offset,
                "nbytes": len(data),
                "shape": list(tensor.shape),
                "dtype": str(tensor.dtype).removeprefix("torch."),
            }
        )
        chunks.append(data)
        offset += len(data)
    blob = b"".join(chunks)
    quant_info = {"quant": quant, "bits": bits if quant == "e8" else None, "codec": repr(codec)}
    header = {
        "format": "lila-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "extra": extra or {},
        "quantization": quant_info,
        "tensors": entries,
        "blob_nbytes": len(blob),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
    }
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(EXPORT_MAGIC)
        fh.write(_LENGTH.pack(len(header_bytes)))
        fh.write(header_bytes)
        fh.write(blob)
    file_bytes = path.stat().st_size
    matrix_bytes = sum(e["nbytes"] for e in entries if e["kind"] == "codec" and len(e["shape"]) == 2)
    report = ExportReport(
        path=path,
        file_bytes=file_bytes,
        fp32_bytes=fp32_bytes,
        quantized_params=quantized,
        total_params=total,
        bits_per_quantized_weight=8.0 * matrix_bytes / max(quantized, 1),
    )
    logger.info(
        "exported %s: %d bytes (%.2fx smaller than fp32), %s",
        path,
        file_bytes,
        report.compression,
        quant_info,
    )
    return report


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the bit pattern
        return tensor.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    array = tensor.contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _raw_tensor(data: bytes, shape: list[int], dtype_name: str, name: str, path: Path) -> torch.Tensor:
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ExportError(f"{path}: tensor {name!r} has unknown dtype {dtype_name!r}")
    if dtype == torch.bfloat16:
        values = torch.from_numpy(np.frombuffer(data, dtype="<i2").copy()).view(torch.bfloat16)
    else:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
        if len(data) % np_dtype.itemsize:
            raise ExportError(
                f"{path}: tensor {name!r} has {len(data)} bytes, not a multiple of {np_dtype.itemsize}"
            )
        values = torch.from_numpy(np.frombuffer(data, dtype=np_dtype).astype(np_dtype.newbyteorder("=")))
    if values.numel() != int(np.prod(shape)):
        raise ExportError(
            f"{path}: tensor {name!r} holds {values.numel()} values, its shape {shape} needs more"
        )
    return values.reshape(shape)


def is_export_file(path: str | Path) -> bool:
    """Whether ``path`` is a file starting with the export magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as fh:
        return fh.read(len(EXPORT_MAGIC)) == EXPORT_MAGIC


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Validate an export file and decode it: (JSON header, state dict)."""
    p = Path(path)
    data = p.read_bytes()
    prefix = len(EXPORT_MAGIC) + _LENGTH.size
    if len(data) < prefix or data[: len(EXPORT_MAGIC)] != EXPORT_MAGIC:
        raise ExportError(f"{p} is not a LILA export file (bad magic); pass a file written by `lila export`")
    (header_len,) = _LENGTH.unpack_from(data, len(EXPORT_MAGIC))
    if header_len > min(MAX_HEADER_BYTES, len(data) - prefix):
        raise ExportError(
            f"{p}: header length {header_len} exceeds the file; the file is truncated or corrupt"
        )
    try:
        header = json.loads(data[prefix : prefix + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{p}: header is not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(header, dict) or header.get("format") != "lila-export":
        raise ExportError(f"{p}: not a lila-export header")
    if header.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ExportError(
            f"{p}: export format version {header.get('format_version')!r}, this build reads "
            f"{EXPORT_FORMAT_VERSION}; re-export the model or upgrade lila-network"
        )
    blob = data[prefix + header_len :]
    if len(blob) != header.get("blob_nbytes"):
        raise ExportError(
            f"{p}: blob has {len(blob)} bytes, header says {header.get('blob_nbytes')}: truncated"
        )
    if hashlib.sha256(blob).hexdigest() != header.get("blob_sha256"):
        raise ExportError(f"{p}: sha256 of the weights does not match the header; the file is corrupt")
    state: dict[str, torch.Tensor] = {}
    try:
        for entry in header["tensors"]:
            name, start, size = entry["name"], int(entry["offset"]), int(entry["nbytes"])
            if start < 0 or size < 0 or start + size > len(blob):
                raise ExportError(f"{p}: tensor {name!r} lies outside the blob")
            chunk = blob[start : start + size]
            if entry["kind"] == "codec":
                tensor = decode(chunk)
                if list(tensor.shape) != list(entry["shape"]):
                    raise ExportError(
                        f"{p}: tensor {name!r} decodes to {list(tensor.shape)}, not {entry['shape']}"
                    )
            elif entry["kind"] == "raw":
                tensor = _raw_tensor(chunk, entry["shape"], entry["dtype"], name, p)
            else:
                raise ExportError(f"{p}: tensor {name!r} has unknown kind {entry['kind']!r}")
            state[name] = tensor
    except CodecError as exc:
        raise ExportError(f"{p}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"{p}: malformed tensor table ({exc!r})") from None
    return header, state


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load ``(LilaLM, meta)`` from a checkpoint directory or an export file (eval mode)."""
    from lila_model.checkpoint import load_checkpoint
    from lila_model.config import LilaConfig
    from lila_model.model import LilaLM

    p = Path(path)
    if p.is_dir():
        return load_checkpoint(p, map_location=map_location)
    if not p.exists():
        raise ExportError(
            f"{p} does not exist; pass a checkpoint directory or a file written by `lila export`"
        )
    header, state = read_export(p)
    try:
        config = LilaConfig.from_dict(dict(header["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{p}: the stored model config is invalid ({exc})") from None
    device = torch.device(map_location)
    with torch.device("meta"):
        model = LilaLM(config)
    model.to_empty(device=device)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"{p}: tensors do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    state = {k: v.to(dtype=expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        model.init_buffers()
    model.eval()
    meta = dict(header.get("extra") or {})
    meta["export"] = {
        **header["quantization"],
        "file_bytes": p.stat().st_size,
        "blob_sha256": header["blob_sha256"],
    }
    return model, meta

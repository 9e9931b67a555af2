# SPDX-License-Identifier: AGPL-3.0-or-later
"""Bits per byte of a language model on held-out text: tokenizer-independent and deterministic.

``bpb = Σ token NLL (nats) / ln 2 / Σ UTF-8 bytes of the texts``.

How each text is scored: it is tokenized on its own and framed like a training document,
``[EOS] tokens [EOS]``. Every token after the leading EOS is predicted once — the text's tokens and the
closing EOS (the model must also know where a document ends), so ``tokens = len(encode(text)) + 1``.
The leading EOS plays the part of the previous document's end and is context only. A framed text longer
than ``seq_len + 1`` tokens is cut into consecutive, non-overlapping windows of ``seq_len`` predictions,
and each window sees only its own tokens as context — the same context regime as training, where
sequences are windows of the packed stream. No text sees another, and batching pads with ignored
positions, so the number depends only on the model, the tokenizer, ``seq_len`` and the texts, not on
``batch_size`` or their order. Byte counts use the text, never the tokens, so models with different
tokenizers are comparable (as in published FineWeb bits-per-byte numbers, up to the context regime).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lila_data.errors import DataError
from lila_data.packing import IGNORE_INDEX
from lila_data.tokenizer import LilaTokenizer

DEFAULT_EVAL_BATCH = 8  # windows per forward pass: memory only, the result does not depend on it


@dataclass(frozen=True)
class BpbResult:
    """Bits per byte and what it was computed from."""

    bpb: float
    nll_nats: float  # summed over all predicted tokens
    tokens: int  # predicted tokens (text tokens + one closing EOS per text)
    bytes: int  # UTF-8 bytes of the texts
    docs: int = 0


def _windows(ids: list[int], eos: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    framed = [eos, *ids, eos]
    return [
        (framed[start : start + seq_len], framed[start + 1 : start + seq_len + 1])
        for start in range(0, len(framed) - 1, seq_len)
    ]


def _logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None:
        raise DataError(
            f"the model returned {type(out).__name__} without .logits; evaluate a LilaLM-like model"
        )
    return logits


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    tokenizer: LilaTokenizer,
    texts: Iterable[str],
    *,
    seq_len: int,
    batch_size: int = DEFAULT_EVAL_BATCH,
    device: str | torch.device = "cpu",
) -> BpbResult:
    """Bits per byte of ``model`` on ``texts`` (see the module docstring for the exact procedure).

    ``seq_len``: context per window, at most the model's maximum; use the training sequence length
    (shorter windows give the model less context and a worse number). ``batch_size``: windows per
    forward pass (memory only; the result does not change).
    """
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len={seq_len}, batch_size={batch_size}: both must be >= 1")
    texts = [t for t in texts]
    if not texts:
        raise DataError("evaluate_bpb got no texts; pass held-out documents (e.g. the validation split)")
    encoded = tokenizer.encode_batch(texts)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if total_bytes == 0:
        raise DataError("evaluate_bpb: the texts are all empty; bits per byte needs at least one byte")
    windows = [w for ids in encoded for w in _windows(ids, tokenizer.eos_id, seq_len)]
    was_training = model.training
    model.eval()
    nll = 0.0
    tokens = 0
    try:
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            width = max(len(inp) for inp, _ in chunk)
            idx = torch.full((len(chunk), width), tokenizer.eos_id, dtype=torch.long)  # [B, T]
            tgt = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
            for row, (inp, out) in enumerate(chunk):
                idx[row, : len(inp)] = torch.tensor(inp)
                tgt[row, : len(out)] = torch.tensor(out)
            logits = _logits(model, idx.to(device))  # [B, T, V]
            if logits.shape[:2] != idx.shape or logits.shape[-1] < tokenizer.vocab_size:
                raise DataError(
                    f"model logits have shape {tuple(logits.shape)} for input {tuple(idx.shape)}; expected "
                    f"[B, T, V] with V >= the tokenizer's {tokenizer.vocab_size}: use the model's own tokenizer"
                )
            log_probs = F.log_softmax(logits.float(), dim=-1)  # [B, T, V]
            tgt = tgt.to(log_probs.device)
            valid = tgt != IGNORE_INDEX  # [B, T]
            picked = log_probs.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, T]
            nll -= float(picked[valid].double().sum())
            tokens += int(valid.sum())
    finally:
        model.train(was_training)
    return BpbResult(
        bpb=nll / math.log(2) / total_bytes, nll_nats=nll, tokens=tokens, bytes=total_bytes, docs=len(texts)
    )

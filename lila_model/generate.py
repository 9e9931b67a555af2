# SPDX-License-Identifier: AGPL-3.0-or-later
"""Autoregressive generation with a KV cache, sampling controls and a resonance monitor.

Sampling order per step: repetition penalty → temperature → top-k → top-p → sample.

``temperature``         0 means greedy (argmax); 0.7–1.0 is usual; high values (> 1.5)
                        produce noise.
``top_k``               keep only the k most likely tokens (None/0 = off); 20–100 is usual.
``top_p``               nucleus sampling: keep the smallest set whose probability mass
                        reaches p (None/1.0 = off); 0.9–0.95 is usual, very low p ≈ greedy.
``repetition_penalty``  CTRL-style: the logit of every token already in the context is
                        divided by the penalty when positive and multiplied by it when
                        negative; 1.0 = off, 1.1–1.3 is usual, ≥ 2 distorts the text.
``resonance_monitor``   also return, per generated token, the mean over blocks of the max
                        cosine of the final hidden state that produced it to the lattice
                        directions (E8 roots for the e8 variant, the 196,560 minimal vectors
                        of Λ24 otherwise) — upstream's "dream decoder", with real lattices.

With the cache, each step feeds only the newest token; once the context would exceed
``block_size`` the cache is rebuilt from the last ``block_size`` tokens each step, which is
what the uncached path computes, so greedy output is identical with and without the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lila_model.attention import KVCache
from lila_model.model import LilaLM
from lila_model.resonance import lattice_directions, max_cosine


@dataclass
class GenerationResult:
    """``tokens`` [B, T + n] (prompt and continuation), ``new_tokens`` [B, n], ``resonance`` [B, n] or None."""

    tokens: Tensor
    new_tokens: Tensor
    resonance: Tensor | None = None


def _check_options(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float
) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 1 (or 0/None to disable)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None to disable)")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0 = off)")


def apply_repetition_penalty(logits: Tensor, context: Tensor, penalty: float) -> Tensor:
    """CTRL repetition penalty on logits [B, V] for the tokens in context [B, T]."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, context)  # [B, T]
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, context, seen)


def filter_logits(logits: Tensor, *, top_k: int | None, top_p: float | None) -> Tensor:
    """Set to −inf every logit of [B, V] outside the top-k and outside the top-p nucleus."""
    if top_k:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
        drop_sorted = mass_before >= top_p  # the best token is always kept
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    context: Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The next token [B] for logits [B, V] given the context [B, T]."""
    logits = apply_repetition_penalty(logits.float(), context, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LilaLM,
    idx: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    use_cache: bool = True,
    resonance_monitor: bool = False,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Continue the prompts idx [B, T] by ``max_new_tokens`` tokens (see the module docstring).

    With ``eos_id``, a sequence that produced it keeps producing it, and generation stops
    early once every sequence has.
    """
    _check_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a non-empty [batch, time] tensor of token ids; got shape {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    block = model.config.block_size
    directions = None
    if resonance_monitor:
        kind = "e8" if model.config.variant == "e8" else "leech"
        directions = lattice_directions(kind, device=idx.device)
    cache = KVCache(model.config.n_layers) if use_cache else None
    seq = idx
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    scores: list[Tensor] = []
    try:
        for _ in range(max_new_tokens):
            if cache is None:
                step_input = seq[:, -block:]
            elif cache.length == 0 or cache.length + 1 > block:
                cache = KVCache(model.config.n_layers)
                step_input = seq[:, -block:]
            else:
                step_input = seq[:, -1:]
            out = model(step_input, cache=cache, return_hidden=resonance_monitor, last_logits_only=True)
            nxt = sample_next(
                out.logits[:, -1], seq, temperature=temperature, top_k=top_k, top_p=top_p,
                repetition_penalty=repetition_penalty, generator=generator,
            )  # [B]
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done = done | (nxt == eos_id)
            if directions is not None and out.hidden is not None:
                scores.append(max_cosine(out.hidden[:, -1], directions))
            seq = torch.cat([seq, nxt[:, None]], dim=1)  # [B, T + 1]
            if eos_id is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    resonance = torch.stack(scores, dim=1) if scores else None
    return GenerationResult(tokens=seq, new_tokens=seq[:, idx.size(1):], resonance=resonance)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Generation: KV cache equals recomputation, sampling controls, the resonance monitor."""

from __future__ import annotations

import math

import pytest
import torch

from lila_model.config import VARIANTS
from lila_model.generate import apply_repetition_penalty, filter_logits, generate, sample_next
from lila_model.model import LilaLM
from lila_model.resonance import lattice_directions, max_cosine
from tests.helpers.models import tiny_model

VOCAB = 96


def model_for(variant: str, *, block_size: int = 64) -> LilaLM:
    """A tiny model whose greedy output varies (a tied 0.02-init model just repeats its last token)."""
    model = tiny_model(variant, vocab_size=VOCAB, block_size=block_size, tie_embeddings=False, init_std=0.1)
    with torch.no_grad():
        for name, param in model.iter_geometry_scales():
            if name.endswith("bias_scale"):
                param.fill_(2.0)
    return model


def prompt(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_with_and_without_cache_is_identical(variant: str) -> None:
    model = model_for(variant)
    cached = generate(model, prompt(), max_new_tokens=24, temperature=0.0, use_cache=True)
    plain = generate(model, prompt(), max_new_tokens=24, temperature=0.0, use_cache=False)
    assert cached.new_tokens.shape == (2, 24)
    assert torch.equal(cached.tokens, plain.tokens)
    assert torch.equal(cached.tokens[:, :5], prompt())
    assert min(len(set(row)) for row in cached.new_tokens.tolist()) >= 3  # not a constant stream


@pytest.mark.parametrize("variant", ["vanilla", "leech"])
def test_cache_equals_recompute_past_the_block_size(variant: str) -> None:
    model = model_for(variant, block_size=16)
    cached = generate(model, prompt(length=10), max_new_tokens=20, temperature=0.0, use_cache=True)
    plain = generate(model, prompt(length=10), max_new_tokens=20, temperature=0.0, use_cache=False)
    assert cached.tokens.shape == (2, 30)
    assert torch.equal(cached.tokens, plain.tokens)


def test_sampling_is_reproducible_and_top_k_one_is_greedy() -> None:
    model = model_for("vanilla")
    a = generate(
        model, prompt(), max_new_tokens=10, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    b = generate(
        model, prompt(), max_new_tokens=10, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a.tokens, b.tokens)
    greedy = generate(model, prompt(), max_new_tokens=10, temperature=0.0)
    top1 = generate(model, prompt(), max_new_tokens=10, temperature=0.8, top_k=1)
    assert torch.equal(greedy.tokens, top1.tokens)
    nucleus = generate(model, prompt(), max_new_tokens=10, temperature=0.8, top_p=1e-6)
    assert torch.equal(greedy.tokens, nucleus.tokens)


def test_filter_logits_exact() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = filter_logits(logits, top_k=2, top_p=None)
    assert torch.isinf(kept).tolist() == [[False, False, True, True, True]]
    kept = filter_logits(logits, top_k=None, top_p=0.8)  # 0.5 + 0.2 < 0.8 ≤ 0.5 + 0.2 + 0.15
    assert torch.isinf(kept).tolist() == [[False, False, False, True, True]]
    kept = filter_logits(logits, top_k=None, top_p=0.7)  # exactly reached by the first two
    assert torch.isinf(kept).tolist() == [[False, False, True, True, True]]
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    kept = filter_logits(shuffled, top_k=None, top_p=0.8)
    assert torch.isinf(kept).tolist() == [[True, False, True, False, False]]


def test_repetition_penalty_exact() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    context = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(logits, context, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert torch.equal(apply_repetition_penalty(logits, context, 1.0), logits)
    # With a strong penalty the repeated best token loses to a fresh one.
    nxt = sample_next(
        torch.tensor([[3.0, 2.0]]),
        torch.tensor([[0]]),
        temperature=0.0,
        top_k=None,
        top_p=None,
        repetition_penalty=2.0,
    )
    assert nxt.tolist() == [1]


def test_eos_stops_generation() -> None:
    model = model_for("vanilla")
    greedy = generate(model, prompt(batch=1), max_new_tokens=8, temperature=0.0)
    eos = int(greedy.new_tokens[0, 2])
    first = greedy.new_tokens[0].tolist().index(eos)
    stopped = generate(model, prompt(batch=1), max_new_tokens=8, temperature=0.0, eos_id=eos)
    assert stopped.new_tokens[0].tolist() == greedy.new_tokens[0, : first + 1].tolist()


@pytest.mark.parametrize("variant", ["e8", "leech"])
def test_resonance_monitor_matches_the_full_forward_pass(variant: str) -> None:
    model = model_for(variant)
    result = generate(model, prompt(), max_new_tokens=6, temperature=0.0, resonance_monitor=True)
    assert result.resonance is not None and result.resonance.shape == (2, 6)
    directions = lattice_directions("e8" if variant == "e8" else "leech")
    with torch.no_grad():
        hidden = model(result.tokens[:, :-1], return_hidden=True).hidden  # [B, T, d]
    expected = torch.stack([max_cosine(hidden[:, 4 + i], directions) for i in range(6)], dim=1)
    torch.testing.assert_close(result.resonance, expected, rtol=1e-4, atol=1e-4)
    floor = 1 / math.sqrt(2) if variant == "e8" else 0.5  # any block is at least this close to some direction
    assert bool((result.resonance > floor - 0.2).all()) and bool((result.resonance <= 1.0).all())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1.0}, "temperature=-1.0 must be >= 0"),
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0 must be > 0"),
        ({"max_new_tokens": -2}, "max_new_tokens=-2 must be >= 0"),
    ],
)
def test_bad_options_are_rejected(options: dict, message: str) -> None:
    kwargs = {"max_new_tokens": 2, **options}
    with pytest.raises(ValueError, match=message):
        generate(model_for("vanilla"), prompt(), **kwargs)

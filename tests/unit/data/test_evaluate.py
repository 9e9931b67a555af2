# SPDX-License-Identifier: AGPL-3.0-or-later
"""Bits per byte: exact for a uniform model, exact NLL bookkeeping for a bigram model, batch-invariant."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lila_data import DataError, evaluate_bpb, iter_validation_texts, load_tokenizer

TEXTS = [
    "A short line.",
    "Émoji 👩‍👩‍👧 and CJK 漢字 make bytes and characters differ.",
    "word " * 300,  # longer than several windows
    "",
]


@dataclass
class Output:
    logits: torch.Tensor


class Uniform(nn.Module):
    """Logits all zero: every token has probability 1/V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> Output:
        return Output(torch.zeros(*idx.shape, self.vocab) + 0 * self.dummy)


class Bigram(nn.Module):
    """Logits depend only on the current token, so context windows cannot change its NLL."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=generator))

    def forward(self, idx: torch.Tensor) -> Output:
        return Output(self.table[idx])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("fineweb-edu-2048")


@pytest.mark.parametrize(("seq_len", "batch_size"), [(16, 1), (16, 5), (64, 3), (2048, 8)])
def test_uniform_model_gives_log2_v_times_tokens_per_byte(tok, seq_len: int, batch_size: int) -> None:
    result = evaluate_bpb(Uniform(tok.vocab_size), tok, TEXTS, seq_len=seq_len, batch_size=batch_size)
    tokens = sum(len(tok.encode(t)) + 1 for t in TEXTS)  # text tokens + closing EOS
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert (result.tokens, result.bytes, result.docs) == (tokens, n_bytes, len(TEXTS))
    assert result.bpb == pytest.approx(math.log2(tok.vocab_size) * tokens / n_bytes, rel=1e-6)
    assert result.nll_nats == pytest.approx(math.log(tok.vocab_size) * tokens, rel=1e-6)


def test_bigram_nll_is_the_sum_over_every_framed_token_once(tok) -> None:
    model = Bigram(tok.vocab_size)
    log_probs = torch.log_softmax(model.table.detach().double(), dim=-1)
    expected = 0.0
    for text in TEXTS:
        framed = [tok.eos_id, *tok.encode(text), tok.eos_id]
        expected -= sum(float(log_probs[a, b]) for a, b in itertools.pairwise(framed))
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    for seq_len, batch_size in [(7, 2), (50, 4), (4096, 1)]:
        result = evaluate_bpb(model, tok, TEXTS, seq_len=seq_len, batch_size=batch_size)
        assert result.nll_nats == pytest.approx(expected, rel=1e-5)
        assert result.bpb == pytest.approx(expected / math.log(2) / n_bytes, rel=1e-5)


def test_result_does_not_depend_on_batching_and_restores_mode(tok) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(tok.vocab_size, 16), nn.Linear(16, tok.vocab_size))
    texts = list(iter_validation_texts("bundled:fineweb-edu-sample", max_docs=3))
    model.train()
    results = [evaluate_bpb(model, tok, texts, seq_len=96, batch_size=b).bpb for b in (1, 4, 9)]
    assert results[0] == pytest.approx(results[1], rel=1e-9) == pytest.approx(results[2], rel=1e-9)
    assert model.training
    assert 3 < results[0] < 5  # untrained: about log2(2048) = 11 bits per token, ~2.8 bytes per token


def test_bad_inputs(tok) -> None:
    with pytest.raises(DataError, match="no texts"):
        evaluate_bpb(Uniform(tok.vocab_size), tok, [], seq_len=8, batch_size=1)
    with pytest.raises(DataError, match="all empty"):
        evaluate_bpb(Uniform(tok.vocab_size), tok, ["", ""], seq_len=8, batch_size=1)
    with pytest.raises(DataError, match="V >= the tokenizer's 2048"):
        evaluate_bpb(Uniform(100), tok, ["hello"], seq_len=8, batch_size=1)
    with pytest.raises(DataError, match="lone surrogate"):
        evaluate_bpb(Uniform(tok.vocab_size), tok, ["bad \ud800"], seq_len=8, batch_size=1)
    with pytest.raises(DataError, match="both must be >= 1"):
        evaluate_bpb(Uniform(tok.vocab_size), tok, ["x"], seq_len=0, batch_size=1)

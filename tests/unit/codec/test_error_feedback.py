# SPDX-License-Identifier: AGPL-3.0-or-later
"""Error feedback: nothing is lost over rounds (telescoping identity), and it beats plain quantization."""

from __future__ import annotations

import pytest
import torch

from lila_codec import CodecError, ErrorFeedback, get_codec

ROUNDS = 6


@pytest.mark.parametrize(
    ("name", "options"),
    [("e8", {"bits": 2}), ("e8", {"bits": 4, "dither": True}), ("int4", {}), ("leech", {"bits": 3})],
)
def test_decoded_sum_plus_residual_equals_input_sum(name, options):
    codec = get_codec(name, **options)
    feedback = ErrorFeedback(codec)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(5, 77, generator=gen) * (1 + k) for k in range(ROUNDS)]
    decoded_sum = torch.zeros(5, 77, dtype=torch.float64)
    for k, delta in enumerate(inputs):
        payload = feedback.encode(delta, seed=k)
        decoded_sum += codec.decode(payload).double()
    input_sum = torch.stack(inputs).double().sum(0)
    assert feedback.residual is not None
    total = decoded_sum + feedback.residual.double()
    assert torch.allclose(total, input_sum, rtol=0, atol=1e-5 * float(input_sum.abs().max()))
    # the residual is one round's quantization error, not an accumulation of all of them
    assert float(feedback.residual.norm()) < 0.5 * float(inputs[-1].norm())


def test_feedback_tracks_a_constant_signal_better_than_plain_rounds():
    codec = get_codec("e8", bits=2)
    gen = torch.Generator().manual_seed(2)
    delta = torch.randn(4096, generator=gen)
    feedback = ErrorFeedback(codec)
    with_feedback = sum(codec.decode(feedback.encode(delta, seed=k)) for k in range(ROUNDS))
    without = sum(codec.decode(codec.encode(delta, seed=k)) for k in range(ROUNDS))
    target = delta * ROUNDS
    assert float((with_feedback - target).norm()) < 0.5 * float((without - target).norm())


def test_shape_change_needs_reset():
    feedback = ErrorFeedback(get_codec("int8"))
    feedback.encode(torch.ones(10))
    with pytest.raises(CodecError, match="reset"):
        feedback.encode(torch.ones(11))
    feedback.reset()
    assert feedback.residual is None
    feedback.encode(torch.ones(11))
    assert feedback.residual is not None and feedback.residual.shape == (11,)

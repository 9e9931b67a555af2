# SPDX-License-Identifier: AGPL-3.0-or-later
"""Gathered aggregates (peer.averaging.gather): what an owner packs per caller, what a member accepts."""

from __future__ import annotations

import pytest
import torch

from lila_codec import get_codec
from peer.averaging import get_aggregator
from peer.averaging.gather import GATHER_KEY, Gathered, combine, gathers, pack, unpack
from peer.averaging.wire import WireError

A, B, C = (f"12D3KooW{'A' * 30}{c}" for c in "abc")
MEMBERS = [A, B, C]
ENTRIES = [Gathered(A, 1.0, b"aaaa"), Gathered(B, 2.0, b"bb"), Gathered(C, 1.0, b"ccc")]


def test_the_callers_own_payload_is_left_out_and_put_back_by_the_caller():
    listed, body = pack(ENTRIES, caller=B)
    assert listed == [{"peer": A, "weight": 1.0, "bytes": 4}, {"peer": B, "weight": 2.0, "bytes": 0},
                      {"peer": C, "weight": 1.0, "bytes": 3}]
    assert body == b"aaaaccc"
    assert unpack({GATHER_KEY: listed}, body, members=MEMBERS, me=B, own=b"bb") == ENTRIES


@pytest.mark.parametrize(("listed", "body", "message"), [
    ([], b"", "malformed"),
    ([{"peer": "nobody", "weight": 1.0, "bytes": 0}], b"", "not a distinct member"),
    ([{"peer": A, "weight": 1.0, "bytes": 1}, {"peer": A, "weight": 1.0, "bytes": 1}], b"xx", "not a distinct"),
    ([{"peer": A, "weight": float("nan"), "bytes": 1}], b"x", "not a finite number"),
    ([{"peer": A, "weight": True, "bytes": 1}], b"x", "not a finite number"),
    ([{"peer": A, "weight": 1.0, "bytes": 5}], b"x", "outside the reply's payload"),
    ([{"peer": A, "weight": 1.0, "bytes": 1}], b"xy", "does not name"),
    ([{"peer": B, "weight": 1.0, "bytes": 1}], b"x", "its own contribution back"),
    ([{"peer": A, "weight": 1.0, "bytes": 0}], b"", "leaves out"),
])
def test_a_malformed_gather_list_is_refused_with_its_reason(listed, body, message):
    with pytest.raises(WireError, match=message):
        unpack({GATHER_KEY: listed}, body, members=MEMBERS, me=B, own=b"bb")


def test_combine_is_the_aggregators_weighted_mean_of_the_decoded_payloads():
    codec = get_codec("sparse-int", density=0.25, chunk=8, bits=4)
    assert gathers(codec) and not gathers(get_codec("e8"))
    vectors = [torch.arange(16, dtype=torch.float32) * sign for sign in (1.0, -0.5)]
    entries = [Gathered(peer, weight, codec.encode(v)) for peer, weight, v in zip((A, B), (1.0, 3.0), vectors,
                                                                                   strict=True)]
    decoded = [codec.decode(entry.payload) for entry in entries]
    result = combine(entries, decode=lambda entry: codec.decode(entry.payload), aggregator=get_aggregator("mean"),
                     numel=16)
    assert torch.allclose(result, (decoded[0] + 3 * decoded[1]) / 4, rtol=0, atol=1e-6)
    assert int((result != 0).sum()) == int(((decoded[0] != 0) | (decoded[1] != 0)).sum())

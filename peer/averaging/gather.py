# SPDX-License-Identifier: AGPL-3.0-or-later
"""Gathered aggregates: a part owner answers with the contributions themselves, not a re-encoded mean.

With a dense codec the owner encodes the aggregate once and every member decodes those bytes. A sparse
codec (``lila_codec.sparse``: top-k per chunk) cannot carry an aggregate that way: the mean of N
contributions is non-zero on the union of their positions, and quantizing it again loses most of it
(relative error 0.45 at 2 bits, 0.13 at 4 bits on four overlapping 1 % contributions; 8 bits costs more
bytes than sending the contributions). So, as SparseLoCo all-gathers its top-k, the owner screens and
aggregates as usual (deciding who is included and the evidence), then answers every member with the
*payloads* of the included contributions, except the caller's own, which the caller already holds. Every
member, the owner too, decodes the same bytes and combines them with the same aggregator in the same
order (:func:`combine`), so all end with bitwise-identical averages, and nothing is quantized twice.

Reply header: ``gather`` = a list, in aggregation order, of ``{"peer", "weight", "bytes"}``; ``bytes`` is
the length of that contribution's payload inside the reply payload (concatenated in list order), 0 for the
caller's own (left out). A codec opts in with a true ``gather`` attribute (:func:`gathers`).

Cost per member and round: its N − 1 contributions out, the other N − 1 members' contributions back for
its parts, and, as an owner, the N − 1 payloads to each of the N − 1 members: about N times one
contribution per round at N peers (dense: about 2). Sparse contributions are ~100× smaller than dense
ones, so gathering stays far cheaper than any dense round up to groups of dozens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lila_net.aggregation import Aggregator, Contribution

from .matchmaking import is_peer_id
from .wire import WireError

GATHER_KEY = "gather"


def gathers(codec: object) -> bool:
    """True when ``codec``'s aggregates travel as gathered contributions (sparse codecs)."""
    return bool(getattr(codec, "gather", False))


@dataclass(frozen=True)
class Gathered:
    """One included contribution: who sent it, its declared weight and its payload."""

    peer_id: str
    weight: float
    payload: bytes


def pack(entries: Sequence[Gathered], *, caller: str) -> tuple[list[dict[str, Any]], bytes]:
    """The reply to ``caller``: the header's ``gather`` list and the payload (the caller's own left out)."""
    listed, parts = [], []
    for entry in entries:
        own = entry.peer_id == caller
        listed.append({"peer": entry.peer_id, "weight": entry.weight, "bytes": 0 if own else len(entry.payload)})
        if not own:
            parts.append(entry.payload)
    return listed, b"".join(parts)


def unpack(header: dict[str, Any], payload: bytes, *, members: Sequence[str], me: str,
           own: bytes) -> list[Gathered]:
    """The gathered contributions of an owner's reply, checked: listed peers are distinct members, weights
    finite and > 0, lengths add up to the payload; ``own`` (this peer's payload) fills its own entry."""
    listed = header.get(GATHER_KEY)
    if not isinstance(listed, list) or not listed or len(listed) > len(members):
        raise WireError(f"owner's gather list is malformed: expected 1..{len(members)} entries")
    entries: list[Gathered] = []
    offset, seen = 0, set()
    for item in listed:
        peer, weight, size = (item.get(k) for k in ("peer", "weight", "bytes")) if isinstance(item, dict) else (
            None, None, None)
        if not (is_peer_id(peer) and peer in members and peer not in seen):
            raise WireError(f"owner's gather list names {peer!r}: not a distinct member of the group")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight)
                                                                                     and weight > 0):
            raise WireError(f"owner's gather list gives {peer} the weight {weight!r}: not a finite number > 0")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(payload):
            raise WireError(f"owner's gather list gives {peer} {size!r} bytes: outside the reply's payload")
        seen.add(peer)
        if peer == me:
            if size != 0:
                raise WireError("owner's gather list sends this peer its own contribution back")
            body = own
        else:
            if size == 0:
                raise WireError(f"owner's gather list leaves out {peer}'s payload")
            body = bytes(payload[offset: offset + size])
            offset += size
        entries.append(Gathered(peer, float(weight), body))
    if offset != len(payload):
        raise WireError(f"owner's reply holds {len(payload) - offset} bytes its gather list does not name")
    return entries


def combine(entries: Sequence[Gathered], *, decode: Callable[[Gathered], torch.Tensor], aggregator: Aggregator,
            numel: int) -> torch.Tensor:
    """The aggregate of the gathered contributions ([numel] float32): decoded and combined in list order,
    the same computation on every member (the owner passes the tensors it already decoded from the same
    bytes: decoding is deterministic, so they are the members' tensors bit for bit)."""
    contributions = [Contribution(entry.peer_id, decode(entry), entry.weight) for entry in entries]
    return aggregator.aggregate(contributions, numel=numel).tensor

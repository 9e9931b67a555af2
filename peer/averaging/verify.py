# SPDX-License-Identifier: AGPL-3.0-or-later
"""Round verification: peers publish a hash of their new global parameters and compare.

A round that silently failed (hivemind's 8-bit codecs under numpy 2 did exactly that) or a peer that
applied a different update shows up as a hash that disagrees with the group. Only the hashes of the
round's group members count (any admitted peer can publish a hash for any round: sybils outside the group
must not outvote it). The reference hash is the one a strict majority of the members hold; without one
(a tie, a split) it is the ``trusted`` hash (the coordinator's majority for this step) when a member holds
it, else this peer's own — a peer never re-syncs to a minority, and a tie is never broken by peer ids
(they can be ground). A peer whose hash is not the reference must re-download the state, checking that
the download hashes to the reference.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from lila_net.dht.keys import verify_key
from lila_net.dht.records import HASH_PATTERN
from peer.averaging.matchmaking import is_peer_id
from peer.averaging.transport import Transport


def params_hash(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over every tensor's dtype, shape and raw bytes, in the order given (hex digest)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous()
        digest.update(str(flat.dtype).encode())
        digest.update(struct.pack(f">{flat.dim() + 1}q", flat.dim(), *flat.shape))
        digest.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    """Verdict on one round. ``reference_hash`` is None when nobody published."""

    round_index: int
    my_hash: str
    hashes: dict[str, str]
    reference_hash: str | None
    agreeing: tuple[str, ...]
    disagreeing: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def consistent(self) -> bool:
        """True when every peer that published holds the same hash."""
        return not self.disagreeing

    @property
    def i_agree(self) -> bool:
        """False means this peer's parameters differ from the reference: re-download the state."""
        return self.reference_hash is None or self.my_hash == self.reference_hash


def judge(
    round_index: int,
    my_id: str,
    my_hash: str,
    hashes: dict[str, str],
    members: Sequence[str] = (),
    *,
    trusted: str = "",
) -> VerifyReport:
    """Compare the hashes the group ``members`` published (this peer's own included; others' ignored) and
    name who disagrees (see the module docstring for the reference)."""
    group = set(members) | {my_id}
    hashes = {peer: value for peer, value in hashes.items() if peer in group}
    hashes[my_id] = my_hash
    reference = majority_hash(hashes)
    if reference is None:
        reference = trusted if trusted and trusted in hashes.values() else my_hash
    backers: dict[str, list[str]] = {}
    for peer, value in hashes.items():
        backers.setdefault(value, []).append(peer)
    agreeing = tuple(sorted(backers[reference]))
    disagreeing = tuple(sorted(peer for peer, value in hashes.items() if value != reference))
    missing = tuple(sorted(set(members) - set(hashes)))
    return VerifyReport(round_index, my_hash, hashes, reference, agreeing, disagreeing, missing)


def majority_hash(hashes: dict[str, str]) -> str | None:
    """The hash more than half of ``hashes`` (peer id -> hash) hold, or None."""
    counts: dict[str, int] = {}
    for value in hashes.values():
        counts[value] = counts.get(value, 0) + 1
    best = max(counts, key=counts.__getitem__, default=None)
    return best if best is not None and 2 * counts[best] > len(hashes) else None


async def publish_hash(
    transport: Transport, run_id: str, round_index: int, digest: str, *, expiration_s: float
) -> bool:
    if not HASH_PATTERN.match(digest.encode()):
        raise ValueError(f"{digest!r} is not a hex sha256 digest; compute it with params_hash()")
    key = verify_key(run_id, round_index)
    return await transport.dht_store(key, transport.peer_id, digest.encode(), transport.now() + expiration_s)


async def collect_hashes(transport: Transport, run_id: str, round_index: int) -> dict[str, str]:
    """Published hashes of round ``round_index``; malformed records are ignored."""
    records = await transport.dht_get_subkeys(verify_key(run_id, round_index))
    return {
        peer: value.decode()
        for peer, value in records.items()
        if is_peer_id(peer) and HASH_PATTERN.match(value)
    }

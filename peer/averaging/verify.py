# SPDX-License-Identifier: AGPL-3.0-or-later
"""Round verification: peers publish a hash of their new global parameters and compare.

A round that silently failed (hivemind's 8-bit codecs under numpy 2 did exactly that) or a peer that
applied a different update shows up as a hash that disagrees with the group. The reference hash is the
one most peers hold; a tie goes to the hash held by the smallest peer id, so every peer reaches the same
verdict. A peer whose hash is not the reference must re-download the state.
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
    round_index: int, my_id: str, my_hash: str, hashes: dict[str, str], members: Sequence[str] = ()
) -> VerifyReport:
    """Compare the published ``hashes`` (this peer's own included) and name who disagrees."""
    hashes = dict(hashes)
    hashes[my_id] = my_hash
    backers: dict[str, list[str]] = {}
    for peer, value in hashes.items():
        backers.setdefault(value, []).append(peer)
    reference = min(backers, key=lambda value: (-len(backers[value]), min(backers[value])))
    agreeing = tuple(sorted(backers[reference]))
    disagreeing = tuple(sorted(peer for peer, value in hashes.items() if value != reference))
    missing = tuple(sorted(set(members) - set(hashes)))
    return VerifyReport(round_index, my_hash, hashes, reference, agreeing, disagreeing, missing)


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

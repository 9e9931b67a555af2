# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's data feed: batches from leases, progress only for trained batches, exact release."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lila_data import ResumePosition, load_tokenizer, plan_shards
from peer.data_feed import DataFeed, Lease

SPEC = "bundled:fineweb-edu-sample"
SEQ_LEN = 64
BATCH = 4


@dataclass
class InMemoryLeases:
    """A tiny stand-in for the coordinator's lease ledger (this test is about the feed)."""

    shards: list
    positions: dict = field(default_factory=dict)
    completed: list = field(default_factory=list)
    tokens: int = 0
    next_id: int = 0

    def lease(self) -> Lease | None:
        for shard in self.shards:
            sid = shard.shard_id
            if sid in self.completed or self.positions.get(sid, "free") == "held":
                continue
            position = self.positions.get(sid, ResumePosition())
            self.positions[sid] = "held"
            self.next_id += 1
            return Lease(f"l{self.next_id}", shard, position, 0, SEQ_LEN, None)
        return None

    def report_progress(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        self.tokens += tokens

    def complete(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        assert position.docs_consumed == lease.shard.num_docs
        self.completed.append(lease.shard.shard_id)
        self.positions.pop(lease.shard.shard_id, None)
        self.tokens += tokens

    def release(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        self.positions[lease.shard.shard_id] = position
        self.tokens += tokens


def _drain(feed: DataFeed, limit: int | None = None) -> list[torch.Tensor]:
    out = []
    while limit is None or len(out) < limit:
        batch = feed.next_batch()
        if batch is None:
            break
        out.append(batch.inputs)
        feed.commit(batch)
    return out


def test_interrupted_feed_trains_exactly_the_same_tokens() -> None:
    tokenizer = load_tokenizer()
    shards = plan_shards(SPEC, docs_per_shard=5)[:4]

    reference = InMemoryLeases(shards)
    full = torch.cat([b.reshape(-1) for b in _drain(DataFeed(reference, tokenizer=tokenizer, batch_size=BATCH,
                                                               validation_fraction=0.1))])
    assert sorted(reference.completed) == sorted(s.shard_id for s in shards)
    assert reference.tokens == full.numel()

    ledger = InMemoryLeases(shards)
    first = DataFeed(ledger, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1)
    trained = _drain(first, limit=3)
    first.next_batch()  # read but never trained: must be read again by the next holder
    first.release()
    second = DataFeed(ledger, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1)
    trained += _drain(second)
    resumed = torch.cat([b.reshape(-1) for b in trained])
    assert sorted(ledger.completed) == sorted(reference.completed)
    assert ledger.tokens == reference.tokens
    # The same multiset of sequences (order may differ: released shards are re-leased later).
    rows = lambda t: sorted(map(tuple, t.reshape(-1, SEQ_LEN).tolist()))  # noqa: E731
    assert rows(resumed) == rows(full)

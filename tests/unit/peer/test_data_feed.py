# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's data feed: batches from leases, progress only for trained batches, exact release."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from lila_data import ResumePosition, load_tokenizer, plan_shards
from peer.data_feed import DataFeed, Lease, LeaseLost

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
    waits: list = field(default_factory=list)

    def lease(self, *, wait: bool = True) -> Lease | None:
        self.waits.append(wait)
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
    full = torch.cat(
        [
            b.reshape(-1)
            for b in _drain(
                DataFeed(reference, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1)
            )
        ]
    )
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


def test_without_waiting_a_peer_gets_a_short_batch_and_release_reports_exact_positions() -> None:
    tokenizer = load_tokenizer()
    shards = plan_shards(SPEC, docs_per_shard=5)[:1]
    ledger = InMemoryLeases(shards)
    feed = DataFeed(ledger, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1)
    other = DataFeed(ledger, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1)
    first = feed.next_batch(wait=False)
    assert first is not None and first.inputs.shape == (BATCH, SEQ_LEN)
    feed.commit(first)
    # the only shard is held by `feed`: another peer gets nothing now instead of waiting
    assert other.next_batch(wait=False) is None and ledger.waits[-1] is False
    unread = feed.next_batch(wait=False)  # read, never trained
    assert unread is not None
    released = feed.release()
    assert [(lease.shard.shard_id, position) for lease, position in released] == [
        (shards[0].shard_id, first.marks[-1][1])]
    assert ledger.positions[shards[0].shard_id] == first.marks[-1][1]
    assert ledger.tokens == BATCH * SEQ_LEN
    assert feed.release() == []


@dataclass
class ExpiringLeases(InMemoryLeases):
    """The coordinator took the first lease back (its holder was silent past the lease timeout)."""

    expired: set = field(default_factory=set)

    def report_progress(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        if lease.lease_id in self.expired:
            raise LeaseLost(f"lease {lease.lease_id} is not held by this peer")
        super().report_progress(lease, position, tokens)


def test_a_lease_taken_back_by_the_coordinator_is_dropped_and_training_goes_on() -> None:
    tokenizer = load_tokenizer()
    shards = plan_shards(SPEC, docs_per_shard=5)[:2]
    ledger = ExpiringLeases(shards)
    feed = DataFeed(ledger, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1)
    first = feed.next_batch()
    feed.commit(first)
    ledger.expired.add("l1")
    second = feed.next_batch()
    assert {lease_id for lease_id, _ in second.marks} == {"l1"}
    feed.commit(second)  # no exception: the lease is dropped, its unreported tokens counted as lost
    assert feed.lost_tokens == BATCH * SEQ_LEN and ledger.tokens == BATCH * SEQ_LEN
    third = feed.next_batch()
    assert {lease_id for lease_id, _ in third.marks} == {"l2"}  # the next shard, not the lost one
    feed.commit(third)
    assert [lease.lease_id for lease, _ in feed.release()] == ["l2"]


@dataclass
class CountingLeases(InMemoryLeases):
    reports: list = field(default_factory=list)

    def report_progress(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        self.reports.append((lease.lease_id, position, tokens))
        super().report_progress(lease, position, tokens)


def test_progress_is_reported_at_most_every_interval_and_flushed_exactly() -> None:
    tokenizer = load_tokenizer()
    shards = plan_shards(SPEC, docs_per_shard=5)[:1]
    ledger = CountingLeases(shards)
    now = [100.0]
    feed = DataFeed(ledger, tokenizer=tokenizer, batch_size=BATCH, validation_fraction=0.1,
                    report_interval_s=1.0, clock=lambda: now[0])
    batches = []
    for _ in range(4):  # 4 batches within 0.75 s of the lease: nothing reported yet
        batches.append(feed.next_batch())
        feed.commit(batches[-1])
        now[0] += 0.25
    assert ledger.reports == []
    batches.append(feed.next_batch())
    feed.commit(batches[-1])  # 1 s after the lease: the 5 batches in one report
    assert ledger.reports == [("l1", batches[-1].marks[-1][1], 5 * BATCH * SEQ_LEN)]
    batches.append(feed.next_batch())
    feed.commit(batches[-1])
    assert len(ledger.reports) == 1
    feed.flush()  # end of an inner period: the rest at once, at the last trained position
    assert ledger.reports[-1] == ("l1", batches[-1].marks[-1][1], BATCH * SEQ_LEN)
    feed.flush()  # nothing new: no empty report
    assert len(ledger.reports) == 2 and ledger.tokens == 6 * BATCH * SEQ_LEN


def test_a_negative_report_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="report_interval_s"):
        DataFeed(InMemoryLeases([]), tokenizer=load_tokenizer(), batch_size=BATCH, validation_fraction=0.1,
                 report_interval_s=-1.0)

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Training batches from leased shards, with exact bookkeeping of what was trained.

The feed leases a shard from the coordinator, reads it with :class:`lila_data.ShardReader` from the
lease's resume position, and hands out batches. Nothing counts as trained until the caller
:meth:`commit`\\ s a batch after its optimizer step: only then is progress reported, and a shard whose
last sequence was trained is completed. :meth:`release` gives every held lease back at the position
after the last *trained* sequence, so sequences that were read but not trained are read again by the
next holder — no token is lost or trained twice.

Progress reports: every committed batch moves a lease's trained position, but the feed tells the
coordinator at most every ``report_interval_s`` per lease (and at :meth:`flush`, completion and release).
Tuning: each report is a gRPC call and a ledger write at the coordinator, so with fast steps reporting
every batch costs the peer a round trip on every step (a visible share of a small model's step) and
the coordinator a transaction per step per peer (and trips its per-peer rate limit); about a second is
plenty for the status page.
Longer intervals only mean that a peer dying mid-period leaves more unreported sequences, which its
lease's next holder trains again — its own unaveraged work is lost anyway, so nothing is credited twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lila_data import ResumePosition, ShardAddress, ShardReader
from lila_data.tokenizer import LilaTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """A shard lent to this peer, and where to start reading it."""

    lease_id: str
    shard: ShardAddress
    position: ResumePosition
    stage_index: int
    seq_len: int
    doc_filter: str | None


class LeaseLost(RuntimeError):
    """The coordinator no longer counts the lease as this peer's (it expired while the peer was silent,
    e.g. a laptop that slept past the lease timeout): the shard went back to the queue at its last
    reported position and someone else continues it."""


class LeaseClient(Protocol):
    """What the feed needs from the coordinator (implemented over gRPC in :mod:`peer.coordinator_client`)."""

    def lease(self, *, wait: bool = True) -> Lease | None:
        """A new lease, or None when the curriculum has no shard left (with ``wait=False`` also when
        every shard is leased to someone else right now; with ``wait=True`` it waits for one)."""

    def report_progress(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        """``tokens`` more tokens of ``lease`` were trained; resume from ``position``. The reports raise
        :class:`LeaseLost` when the coordinator no longer counts the lease as this peer's."""

    def complete(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        """The shard is done (its final position), with the last ``tokens`` trained tokens."""

    def release(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        """Give the shard back; the next holder resumes at ``position``."""


@dataclass
class _Held:
    lease: Lease
    reader: ShardReader
    sequences: Iterator
    finished_reading: bool = False
    trained_position: ResumePosition = field(default_factory=ResumePosition)
    unreported_tokens: int = 0
    pending: int = 0  # sequences handed out in batches that were not committed yet
    last_report: float = 0.0  # clock() of the last progress report (or of the lease)


@dataclass(frozen=True)
class Batch:
    """``inputs``/``targets``: LongTensor[B, seq_len]. ``marks`` say which lease each row came from."""

    inputs: torch.Tensor
    targets: torch.Tensor
    marks: tuple[tuple[str, ResumePosition], ...]
    stage_index: int

    @property
    def tokens(self) -> int:
        return int(self.inputs.numel())


class DataFeed:
    """Batches of ``batch_size`` sequences from leased shards of one curriculum stage at a time."""

    def __init__(self, client: LeaseClient, *, tokenizer: LilaTokenizer, batch_size: int,
                 validation_fraction: float, report_interval_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if report_interval_s < 0:
            raise ValueError(f"report_interval_s={report_interval_s}: must be >= 0 (0 reports every batch)")
        self._client = client
        self._report_interval_s = report_interval_s
        self._clock = clock
        self._tokenizer = tokenizer
        self._batch_size = batch_size
        self._validation_fraction = validation_fraction
        self._held: dict[str, _Held] = {}
        self._order: list[str] = []  # lease ids being read, oldest first
        self.lost_tokens = 0  # trained on leases the coordinator took back before they were reported

    def _open(self, lease: Lease) -> _Held:
        reader = ShardReader(lease.shard, tokenizer=self._tokenizer, seq_len=lease.seq_len,
                             doc_filter=lease.doc_filter, position=lease.position,
                             validation_fraction=self._validation_fraction)
        held = _Held(lease=lease, reader=reader, sequences=iter(reader), trained_position=lease.position,
                     last_report=self._clock())
        self._held[lease.lease_id] = held
        self._order.append(lease.lease_id)
        logger.info("leased shard %s from %s", lease.shard.shard_id, lease.position)
        return held

    def next_batch(self, *, wait: bool = True) -> Batch | None:
        """The next batch, or None when no shard is left. A batch never mixes curriculum stages
        (a different sequence length); a short batch is returned at a stage boundary.

        ``wait=False``: do not wait for a shard to come free; return what is read (a short batch, or
        None when nothing is) as soon as the coordinator has no shard for this peer right now."""
        inputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        marks: list[tuple[str, ResumePosition]] = []
        stage: int | None = None
        while len(inputs) < self._batch_size:
            held = self._reading()
            if held is None:
                lease = self._client.lease() if wait else self._client.lease(wait=False)
                if lease is None:
                    break
                if lease.lease_id in self._held:
                    # The coordinator handed back a lease we hold (we are at its per-peer maximum):
                    # end this batch short; committing it completes the finished shard.
                    break
                if stage is not None and lease.stage_index != stage:
                    # Keep the new lease for the next batch; finish this one short.
                    self._open(lease)
                    break
                held = self._open(lease)
            if stage is None:
                stage = held.lease.stage_index
            elif held.lease.stage_index != stage:
                break
            try:
                seq = next(held.sequences)
            except StopIteration:
                held.finished_reading = True
                try:
                    self._maybe_complete(held)
                except LeaseLost as exc:
                    self._lost(held, exc)
                continue
            held.pending += 1
            inputs.append(seq.input_ids)
            targets.append(seq.targets)
            marks.append((held.lease.lease_id, seq.position))
        if not inputs:
            return None
        return Batch(torch.stack(inputs), torch.stack(targets), tuple(marks), stage if stage is not None else 0)

    def _reading(self) -> _Held | None:
        for lease_id in self._order:
            held = self._held[lease_id]
            if not held.finished_reading:
                return held
        return None

    def commit(self, batch: Batch) -> None:
        """The batch was trained: complete shards whose last sequence it held, and report progress (at
        most every ``report_interval_s`` per lease)."""
        per_row = batch.inputs.shape[1]
        for lease_id, position in batch.marks:
            held = self._held.get(lease_id)
            if held is None:  # lost while this batch trained
                continue
            held.trained_position = position
            held.unreported_tokens += per_row
            held.pending -= 1
        for lease_id in dict.fromkeys(lease_id for lease_id, _ in batch.marks):
            held = self._held.get(lease_id)
            if held is None:
                continue
            try:
                if not self._maybe_complete(held) and (
                        self._clock() - held.last_report >= self._report_interval_s):
                    self._report(held)
            except LeaseLost as exc:
                self._lost(held, exc)

    def flush(self) -> None:
        """Report every lease's trained progress that is not reported yet (e.g. at the end of an inner
        period, so the run's token count is current for the round and the schedule)."""
        for lease_id in list(self._order):
            held = self._held[lease_id]
            if held.unreported_tokens:
                try:
                    self._report(held)
                except LeaseLost as exc:
                    self._lost(held, exc)

    def _report(self, held: _Held) -> None:
        self._client.report_progress(held.lease, held.trained_position, held.unreported_tokens)
        held.unreported_tokens = 0
        held.last_report = self._clock()

    def _lost(self, held: _Held, exc: LeaseLost) -> None:
        logger.warning("lease %s of shard %s is no longer ours (%s): dropping it; the %d tokens trained on it "
                       "since the last report are not credited and will be trained again by its next holder",
                       held.lease.lease_id, held.lease.shard.shard_id, exc, held.unreported_tokens)
        self.lost_tokens += held.unreported_tokens
        self._forget(held.lease.lease_id)

    def _maybe_complete(self, held: _Held) -> bool:
        """Complete a shard once it is read to the end and every sequence read from it was trained."""
        if not held.finished_reading or held.pending:
            return False
        held.trained_position = held.reader.position  # the final position: every document consumed
        self._client.complete(held.lease, held.trained_position, held.unreported_tokens)
        self._forget(held.lease.lease_id)
        return True

    def release(self) -> list[tuple[Lease, ResumePosition]]:
        """Give back every held lease at the position after its last trained sequence; returns what was
        released, with the positions."""
        released = []
        for lease_id in list(self._order):
            held = self._held[lease_id]
            try:
                self._client.release(held.lease, held.trained_position, held.unreported_tokens)
            except LeaseLost as exc:
                self._lost(held, exc)
                continue
            released.append((held.lease, held.trained_position))
            self._forget(lease_id)
        return released

    def _forget(self, lease_id: str) -> None:
        self._held.pop(lease_id, None)
        if lease_id in self._order:
            self._order.remove(lease_id)

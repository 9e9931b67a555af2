# SPDX-License-Identifier: AGPL-3.0-or-later
"""Packing a shard's token stream into fixed-length training sequences (pure, no I/O).

The stream of a shard is ``doc₀ EOS doc₁ EOS …`` over its kept documents, in row order. Sequence ``k``
is the window ``stream[k·L + s : k·L + s + L + 1]`` (``s`` = the resume offset, ``L`` = seq_len):
``input_ids`` are its first L tokens and ``targets`` its last L (inputs shifted by one), so consecutive
sequences overlap by one token and every stream token is a target exactly once. A tail shorter than a
window at the end of the shard is dropped deterministically; its documents still count as consumed.

Document masking (``document_mask=True``): a target whose input is EOS — the first token of the next
document, which nothing in the current document can predict — is set to ``IGNORE_INDEX`` (-100), so
the loss never asks the model to guess across a document boundary. Attention still sees earlier
documents in the window (no position reset).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lila_data.errors import DataError
from lila_data.shards import ResumePosition

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PackedSequence:
    """One training sequence and the position to resume from after it."""

    input_ids: torch.Tensor  # LongTensor[seq_len]
    targets: torch.Tensor  # LongTensor[seq_len], IGNORE_INDEX where masked
    position: ResumePosition


class TokenWindows:
    """Cuts a growing token stream into windows of ``seq_len + 1`` tokens with stride ``seq_len``.

    Positions are absolute in the shard's stream. The caller appends rows (documents, skipped ones with
    length 0) in order with :meth:`append`, starting at row ``first_row`` whose stream offset is
    ``first_row_offset``; windows start at ``start_token`` (≥ ``first_row_offset``). ``total_rows`` is the
    number of rows in the shard: the last window's position reports them all consumed.
    """

    def __init__(
        self,
        *,
        seq_len: int,
        eos_id: int,
        first_row: int,
        first_row_offset: int,
        start_token: int,
        total_rows: int,
        document_mask: bool = False,
    ) -> None:
        if seq_len < 1:
            raise DataError(f"seq_len={seq_len}: must be >= 1 (tokens per training sequence)")
        if start_token < first_row_offset:
            raise DataError(
                f"resume position: token {start_token} lies before document {first_row} (stream offset "
                f"{first_row_offset}); the position does not belong to this shard, tokenizer, filter and split"
            )
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.total_rows = total_rows
        self.document_mask = document_mask
        self._next = start_token
        self._buf = np.empty(0, dtype=np.int64)
        self._buf_start = first_row_offset
        self._row_base = first_row
        self._ends: list[int] = []
        self._consumed_rows = 0  # rows (after first_row) whose end is <= self._next

    @property
    def stream_len(self) -> int:
        """Tokens of the stream seen so far (absolute)."""
        return self._buf_start + len(self._buf)

    def append(self, row_lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Add rows: ``row_lengths[i]`` tokens each (EOS included, 0 for skipped rows), ``tokens`` concatenated."""
        if int(row_lengths.sum()) != len(tokens):
            raise DataError(
                f"packing: row lengths sum to {int(row_lengths.sum())} but {len(tokens)} tokens were given"
            )
        ends = self.stream_len + np.cumsum(row_lengths)
        self._ends.extend(ends.tolist())
        if len(tokens):
            self._buf = np.concatenate([self._buf, tokens])

    def windows(self, *, final: bool) -> Iterator[PackedSequence]:
        """Yield every window that can be placed now. Before the input is finished (``final=False``) a
        window is held back until the stream shows whether another one follows it, so that the last
        window of a shard can report the shard finished."""
        span = self.seq_len + 1
        while True:
            fits_next = self.stream_len >= self._next + self.seq_len + span
            if not fits_next and not (final and self.stream_len >= self._next + span):
                break
            local = self._next - self._buf_start
            window = self._buf[local : local + span]  # [seq_len + 1]
            self._next += self.seq_len
            position = self._position_at(self._next) if fits_next else self.final_position()
            yield self._sequence(window, position)
        self._trim()

    def final_position(self) -> ResumePosition:
        """The position once the whole input is in and no further window fits: the shard is done."""
        if self.stream_len < self._next:
            raise DataError(
                f"resume position: token {self._next} is past the end of the shard's stream ({self.stream_len} "
                "tokens); the position does not belong to this shard, tokenizer, filter and split"
            )
        return ResumePosition(docs_consumed=self.total_rows, tokens_consumed=self.stream_len)

    def _position_at(self, token: int) -> ResumePosition:
        while self._consumed_rows < len(self._ends) and self._ends[self._consumed_rows] <= token:
            self._consumed_rows += 1
        return ResumePosition(docs_consumed=self._row_base + self._consumed_rows, tokens_consumed=token)

    def _sequence(self, window: np.ndarray, position: ResumePosition) -> PackedSequence:
        inputs = torch.from_numpy(window[:-1].copy())  # [seq_len]
        targets = torch.from_numpy(window[1:].copy())  # [seq_len]
        if self.document_mask:
            targets[inputs == self.eos_id] = IGNORE_INDEX
        return PackedSequence(input_ids=inputs, targets=targets, position=position)

    def _trim(self) -> None:
        drop = min(self._next, self.stream_len) - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        if self._consumed_rows:
            del self._ends[: self._consumed_rows]
            self._row_base += self._consumed_rows
            self._consumed_rows = 0

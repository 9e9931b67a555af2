# SPDX-License-Identifier: AGPL-3.0-or-later
"""ShardReader: read a shard's documents, filter and split them, tokenize, and pack into sequences.

Resuming: a :class:`~lila_data.shards.ResumePosition` ``(d, t)`` says that documents ``[0, d)`` of
the shard lie wholly before stream token ``t``. The reader re-tokenizes those ``d`` documents only to
learn their stream length, then streams from document ``d`` and starts the next window at token ``t``;
the sequences that follow are exactly those an uninterrupted reader would have produced. A position is
valid only with the same tokenizer, filter, split and validation fraction (the sequence length may
change: windows simply restart at ``t``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lila_data.errors import DataError
from lila_data.filters import DocFilter, parse_filter
from lila_data.packing import PackedSequence, TokenWindows
from lila_data.shards import ResumePosition, ShardAddress
from lila_data.source_base import DEFAULT_BATCH_ROWS, ID_COLUMN, REQUIRED_COLUMNS, TEXT_COLUMN, Source
from lila_data.sources import open_source
from lila_data.tokenizer import LilaTokenizer
from lila_data.validation import DEFAULT_VALIDATION_FRACTION, check_split, split_mask

logger = logging.getLogger(__name__)


class ShardReader:
    """Iterate the :class:`PackedSequence` of one shard, optionally from a released position.

    ``doc_filter`` (e.g. ``"int_score >= 4"``) and ``split`` ("train" skips held-out documents,
    "validation" keeps only them, "all" keeps every document) decide which documents enter the stream;
    documents they skip, and empty documents, still count as consumed. ``document_mask`` masks targets
    that cross a document boundary (see :mod:`lila_data.packing`). ``batch_rows`` documents are read and
    tokenized at a time: larger is faster, smaller holds less text (``python -m bench.data`` measures
    the reader's throughput). Pass ``source`` to reuse an open source (its spec must be the shard's).

    ``position`` is where to resume after the last sequence yielded (the start before iterating); once
    the iterator is exhausted it is the shard's final position and :attr:`finished` is true. Every
    iteration starts again from the position given to the constructor. Resuming at document ``d`` costs
    re-reading and re-tokenizing the shard's first ``d`` documents (about as long as reading them the
    first time), which is why shards should not be huge.
    """

    def __init__(
        self,
        shard: ShardAddress,
        *,
        tokenizer: LilaTokenizer,
        seq_len: int,
        doc_filter: str | None = None,
        position: ResumePosition | None = None,
        split: str = "train",
        validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
        document_mask: bool = False,
        source: Source | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        check_split(split)
        if seq_len < 1:
            raise DataError(f"seq_len={seq_len}: must be >= 1 (tokens per training sequence)")
        start = position or ResumePosition()
        if start.docs_consumed > shard.num_docs:
            raise DataError(
                f"resume position {start} is past the {shard.num_docs} documents of shard {shard.shard_id}; "
                "use the position released for this shard"
            )
        if source is not None and source.spec != shard.source:
            raise DataError(
                f"source {source.spec!r} is not the shard's source {shard.source!r}; pass the right one"
            )
        self.shard = shard
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.filter: DocFilter | None = parse_filter(doc_filter) if doc_filter is not None else None
        self.split = split
        self.validation_fraction = validation_fraction
        self.document_mask = document_mask
        self.batch_rows = batch_rows
        self._source = source
        self._start = start
        self.position = start
        self.finished = start.docs_consumed == shard.num_docs

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = open_source(self.shard.source)
        return self._source

    def _columns(self) -> list[str]:
        extra = list(self.filter.columns) if self.filter else []
        return list(dict.fromkeys([*REQUIRED_COLUMNS, *extra]))

    def _tables(self, first: int, stop: int) -> Iterator[pa.Table]:
        shard = self.shard
        return self.source.read(
            shard.file,
            row_start=shard.row_start + first,
            row_stop=shard.row_start + stop,
            columns=self._columns(),
            batch_rows=self.batch_rows,
        )

    def _keep(self, table: pa.Table) -> np.ndarray:
        """Rows of ``table`` that enter the stream: non-empty text, passing the filter, in the split."""
        non_empty = pc.fill_null(pc.greater(pc.binary_length(table.column(TEXT_COLUMN)), 0), False)
        keep = non_empty.to_numpy(zero_copy_only=False).astype(bool)
        if self.filter is not None:
            keep &= self.filter.mask(table, where=self.source.where(self.shard.file))
        if self.split != "all":
            ids = table.column(ID_COLUMN).to_pylist()
            keep &= split_mask(ids, split=self.split, fraction=self.validation_fraction)
        return keep

    def _encode(self, table: pa.Table) -> tuple[np.ndarray, list[list[int]]]:
        """Per-row stream lengths (tokens + EOS, 0 for skipped rows) and the kept rows' token ids."""
        keep = self._keep(table)
        texts = table.column(TEXT_COLUMN).to_pylist()
        kept_texts = [texts[i] for i in np.flatnonzero(keep)]
        encoded = self.tokenizer.encode_batch(kept_texts) if kept_texts else []
        lengths = np.zeros(table.num_rows, dtype=np.int64)
        lengths[keep] = [len(ids) + 1 for ids in encoded]
        return lengths, encoded

    def _rows(self, first: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shard rows ``first…`` in batches: (per-row stream lengths, concatenated tokens with EOS)."""
        eos = self.tokenizer.eos_id
        for table in self._tables(first, self.shard.num_docs):
            lengths, encoded = self._encode(table)
            tokens = np.fromiter(
                itertools.chain.from_iterable(itertools.chain(ids, (eos,)) for ids in encoded),
                dtype=np.int64,
                count=int(lengths.sum()),
            )
            yield lengths, tokens

    def _prefix_tokens(self, docs: int) -> int:
        """Stream length of the shard's first ``docs`` documents (re-tokenized: positions hold no cache)."""
        return sum(int(self._encode(table)[0].sum()) for table in self._tables(0, docs)) if docs else 0

    def __iter__(self) -> Iterator[PackedSequence]:
        start = self._start
        if start.docs_consumed == self.shard.num_docs:
            self.position, self.finished = start, True
            return
        windows = TokenWindows(
            seq_len=self.seq_len,
            eos_id=self.tokenizer.eos_id,
            first_row=start.docs_consumed,
            first_row_offset=self._prefix_tokens(start.docs_consumed),
            start_token=start.tokens_consumed,
            total_rows=self.shard.num_docs,
            document_mask=self.document_mask,
        )
        for lengths, tokens in self._rows(start.docs_consumed):
            windows.append(lengths, tokens)
            for sequence in windows.windows(final=False):
                self.position = sequence.position
                yield sequence
        for sequence in windows.windows(final=True):
            self.position = sequence.position
            yield sequence
        self.position = windows.final_position()
        self.finished = True
        logger.debug("shard %s finished at %s", self.shard.shard_id, self.position)

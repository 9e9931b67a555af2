# SPDX-License-Identifier: AGPL-3.0-or-later
"""Whole-document iteration over a source: validation texts for the evaluator, corpora for tokenizers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lila_data.errors import DataError
from lila_data.filters import parse_filter
from lila_data.source_base import ID_COLUMN, REQUIRED_COLUMNS, TEXT_COLUMN, Source
from lila_data.sources import open_source
from lila_data.validation import DEFAULT_VALIDATION_FRACTION, check_split, split_mask


@dataclass
class DocumentTally:
    """What one :func:`iter_texts` pass went through, for saying which documents a command used: ``read``
    non-empty documents that pass the filter (in any split), ``kept`` of them in the split (the ones
    yielded), ``complete`` once the whole source was read (False when ``max_docs`` stopped it first)."""

    read: int = 0
    kept: int = 0
    complete: bool = False


def iter_texts(
    spec: str,
    *,
    split: str = "all",
    fraction: float = DEFAULT_VALIDATION_FRACTION,
    doc_filter: str | None = None,
    max_docs: int | None = None,
    source: Source | None = None,
    tally: DocumentTally | None = None,
) -> Iterator[str]:
    """Texts of the non-empty documents of ``spec`` in source order that are in ``split`` and pass
    ``doc_filter``, at most ``max_docs`` of them (None: all); ``tally`` (if given) counts them as it goes."""
    check_split(split)
    if max_docs is not None and max_docs < 1:
        raise DataError(f"max_docs={max_docs}: must be >= 1 (or None for every document)")
    tally = tally if tally is not None else DocumentTally()
    source = source or open_source(spec)
    parsed = parse_filter(doc_filter) if doc_filter is not None else None
    columns = [*REQUIRED_COLUMNS, *(parsed.columns if parsed else ())]
    for name, _, table in source.iter_tables(columns=columns):
        in_split = split_mask(table.column(ID_COLUMN).to_pylist(), split=split, fraction=fraction)
        passes = parsed.mask(table, where=source.where(name)) if parsed is not None else np.ones_like(in_split)
        texts = table.column(TEXT_COLUMN).to_pylist()
        for index in np.flatnonzero(passes):
            if not texts[index]:
                continue
            tally.read += 1
            if in_split[index]:
                tally.kept += 1
                yield texts[index]
                if max_docs is not None and tally.kept >= max_docs:
                    return
    tally.complete = True


def iter_validation_texts(
    spec: str,
    *,
    fraction: float = DEFAULT_VALIDATION_FRACTION,
    max_docs: int | None = None,
    doc_filter: str | None = None,
) -> Iterator[str]:
    """Texts of the held-out validation documents of ``spec`` (the ones training readers skip)."""
    return iter_texts(spec, split="validation", fraction=fraction, doc_filter=doc_filter, max_docs=max_docs)

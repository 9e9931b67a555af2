# SPDX-License-Identifier: AGPL-3.0-or-later
"""The document flags ``lila eval`` and ``lila tokenizer train`` share, and the texts they select."""

from __future__ import annotations

import argparse

from lila_data.documents import DocumentTally, iter_texts
from lila_data.errors import DataError
from lila_data.sources import DEFAULT_SOURCE
from lila_data.validation import DEFAULT_VALIDATION_FRACTION, SPLITS


def add_document_flags(parser: argparse.ArgumentParser, *, split: str | None, split_help: str, max_docs: int | None,
                       max_docs_help: str, filter_example: str,
                       validation_fraction: float | None = DEFAULT_VALIDATION_FRACTION,
                       fraction_help: str | None = None) -> None:
    """``--data``, ``--split``, ``--validation-fraction``, ``--filter`` and ``--max-docs`` (a None default
    lets the command choose, and say what it chose)."""
    parser.add_argument("--data", default=DEFAULT_SOURCE, help=f"source spec (default {DEFAULT_SOURCE})")
    parser.add_argument("--split", choices=SPLITS, default=split, help=split_help)
    parser.add_argument("--validation-fraction", type=float, default=validation_fraction,
                        help=fraction_help or "share of documents held out for validation (default %(default)s)")
    parser.add_argument("--filter", default=None, help=f"document filter, e.g. '{filter_example}'")
    parser.add_argument("--max-docs", type=int, default=max_docs, help=max_docs_help)


def selected_texts(args: argparse.Namespace, *, empty: str, split: str | None = None,
                   fraction: float | None = None, max_docs: int | None = None,
                   tally: DocumentTally | None = None) -> list[str]:
    """The texts the document flags select (``split``, ``fraction`` and ``max_docs``, when given, replace
    the flags' values); ``tally`` counts what was read. :class:`DataError` with ``empty`` (the fix) when
    there are none."""
    split = split or args.split
    fraction = args.validation_fraction if fraction is None else fraction
    max_docs = args.max_docs if max_docs is None else max_docs
    texts = list(iter_texts(args.data, split=split, fraction=fraction, doc_filter=args.filter,
                            max_docs=max_docs, tally=tally))
    if not texts:
        raise DataError(f"source {args.data!r} has no documents in the {split!r} split "
                        f"(filter {args.filter!r}); {empty}")
    return texts

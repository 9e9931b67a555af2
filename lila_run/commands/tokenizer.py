# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila tokenizer train``: train a byte-level BPE tokenizer (with EOS) on a data source.

This is the recipe of the shipped tokenizers (see ``lila_data/assets/RECIPE.md``)::

    lila tokenizer train --data bundled:fineweb-edu-sample --vocab 8192 --out fineweb-edu-8192.json
"""

from __future__ import annotations

import argparse
import logging

from lila_data.documents import iter_texts
from lila_data.errors import DataError
from lila_data.sources import DEFAULT_SOURCE
from lila_data.tokenizer import DEFAULT_MIN_FREQUENCY, train_tokenizer
from lila_data.validation import DEFAULT_VALIDATION_FRACTION, SPLITS

logger = logging.getLogger(__name__)

DEFAULT_VOCAB = 8192


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tokenizer`` (with its ``train`` sub-command) on the ``lila`` parser."""
    parser = subparsers.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    actions = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train a tokenizer on a data source and write its JSON")
    train.add_argument("--data", default=DEFAULT_SOURCE, help=f"source spec (default {DEFAULT_SOURCE})")
    train.add_argument(
        "--vocab", type=int, default=DEFAULT_VOCAB, help="vocabulary size incl. 256 bytes and EOS"
    )
    train.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    train.add_argument(
        "--split",
        choices=SPLITS,
        default="train",
        help="documents to train on (default: train, so validation text stays unseen)",
    )
    train.add_argument("--validation-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION)
    train.add_argument("--max-docs", type=int, default=None, help="train on at most this many documents")
    train.add_argument("--min-frequency", type=int, default=DEFAULT_MIN_FREQUENCY)
    train.add_argument("--filter", default=None, help="document filter, e.g. 'int_score >= 3'")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and write the tokenizer; print its vocabulary size and sha256. Returns the exit code."""
    try:
        texts = list(
            iter_texts(
                args.data,
                split=args.split,
                fraction=args.validation_fraction,
                doc_filter=args.filter,
                max_docs=args.max_docs,
            )
        )
        if not texts:
            raise DataError(
                f"source {args.data!r}: no documents to train on (split {args.split!r}); check the filter"
            )
        tokenizer = train_tokenizer(texts, vocab_size=args.vocab, min_frequency=args.min_frequency)
        digest = tokenizer.save(args.out)
    except DataError as exc:
        logger.error("%s", exc)
        return 2
    print(f"trained on {len(texts)} documents of {args.data} ({args.split} split)")
    print(f"vocab_size {tokenizer.vocab_size}  eos_id {tokenizer.eos_id}")
    print(f"wrote {args.out}  sha256 {digest}")
    return 0

# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila tokenizer train``: train a byte-level BPE tokenizer (with EOS) on a data source.

This is the recipe of the shipped tokenizers (see ``lila_data/assets/RECIPE.md``)::

    lila tokenizer train --data bundled:fineweb-edu-sample --vocab 8192 --out fineweb-edu-8192.json
"""

from __future__ import annotations

import argparse
import logging

from lila_data.tokenizer import DEFAULT_MIN_FREQUENCY, train_tokenizer
from lila_model.config import DEFAULT_VOCAB_SIZE

from .documents import add_document_flags, selected_texts

logger = logging.getLogger(__name__)

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tokenizer`` (with its ``train`` sub-command) on the ``lila`` parser."""
    parser = subparsers.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    actions = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train a tokenizer on a data source and write its JSON")
    add_document_flags(train, split="train",
                       split_help="documents to train on (default: train, so validation text stays unseen)",
                       max_docs=None, max_docs_help="train on at most this many documents",
                       filter_example="int_score >= 3")
    train.add_argument(
        "--vocab", type=int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size incl. 256 bytes and EOS"
    )
    train.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    train.add_argument("--min-frequency", type=int, default=DEFAULT_MIN_FREQUENCY)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and write the tokenizer; print its vocabulary size and sha256. A bad source raises
    :class:`DataError` (``lila``'s main: one line, exit 2)."""
    texts = selected_texts(args, empty="check the filter, or train on --split all")
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab, min_frequency=args.min_frequency)
    digest = tokenizer.save(args.out)
    print(f"trained on {len(texts)} documents of {args.data} ({args.split} split)")
    print(f"vocab_size {tokenizer.vocab_size}  eos_id {tokenizer.eos_id}")
    print(f"wrote {args.out}  sha256 {digest}")
    return 0

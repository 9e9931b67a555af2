# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila eval``: bits per byte of a checkpoint on held-out text.

    lila eval --checkpoint out/ckpt --data bundled:fineweb-edu-sample --max-docs 64 --out eval.json

By default the documents are the validation split of the source (the documents training readers skip);
``--split all`` scores every document. The tokenizer is the one the checkpoint names in its extra data
(key ``tokenizer``), else the shipped ``fineweb-edu-<vocab_size>``; the window length is the model's
``block_size`` unless ``--seq-len`` is given. See :mod:`lila_data.evaluate` for how bpb is computed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lila_data.documents import iter_texts
from lila_data.errors import DataError
from lila_data.sources import DEFAULT_SOURCE
from lila_data.tokenizer import SHIPPED_TOKENIZERS, load_tokenizer
from lila_data.validation import DEFAULT_VALIDATION_FRACTION, SPLITS

logger = logging.getLogger(__name__)

DEFAULT_MAX_DOCS = 64
DEFAULT_BATCH_SIZE = 8
TOKENIZER_PREFIX = "fineweb-edu-"
EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``lila`` parser."""
    parser = subparsers.add_parser("eval", help="bits per byte of a checkpoint on held-out text")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (save_checkpoint output)")
    parser.add_argument("--data", default=DEFAULT_SOURCE, help=f"source spec (default {DEFAULT_SOURCE})")
    parser.add_argument("--split", choices=SPLITS, default="validation", help="documents to score")
    parser.add_argument("--validation-fraction", type=float, default=DEFAULT_VALIDATION_FRACTION)
    parser.add_argument("--filter", default=None, help="document filter, e.g. 'int_score >= 4'")
    parser.add_argument("--max-docs", type=int, default=DEFAULT_MAX_DOCS, help="score at most N documents")
    parser.add_argument("--tokenizer", default=None, help="tokenizer name or JSON path (default: see above)")
    parser.add_argument("--seq-len", type=int, default=None, help="window length (default: model block_size)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    parser.set_defaults(func=run)
    return parser


def pick_tokenizer(requested: str | None, extra: dict[str, Any], vocab_size: int) -> str:
    """The tokenizer to evaluate with: the flag, else the checkpoint's, else the shipped one of that size."""
    if requested:
        return requested
    if isinstance(extra.get("tokenizer"), str):
        return extra["tokenizer"]
    name = f"{TOKENIZER_PREFIX}{vocab_size}"
    if name in SHIPPED_TOKENIZERS:
        return name
    raise DataError(
        f"the checkpoint has vocab_size {vocab_size} and names no tokenizer; pass --tokenizer "
        f"(shipped: {', '.join(SHIPPED_TOKENIZERS)}) or a tokenizer JSON file"
    )


def _load_model(checkpoint: str, device: str) -> tuple[Any, dict[str, Any]]:
    from lila_codec.export import ExportError, load_model
    from lila_model.checkpoint import CheckpointError

    if not Path(checkpoint).exists():
        raise DataError(
            f"checkpoint {checkpoint} does not exist; pass a directory written by training or a `lila export` file"
        )
    try:
        return load_model(checkpoint, map_location=device)
    except (CheckpointError, ExportError) as exc:
        raise DataError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    """Evaluate and print bpb (and write JSON with ``--out``). Returns the exit code."""
    from lila_data.evaluate import evaluate_bpb

    try:
        model, extra = _load_model(args.checkpoint, args.device)
        config = model.config
        tokenizer = load_tokenizer(pick_tokenizer(args.tokenizer, extra or {}, config.vocab_size))
        seq_len = args.seq_len or config.block_size
        if seq_len > config.block_size:
            raise DataError(
                f"--seq-len {seq_len} exceeds the model's block_size {config.block_size}; lower it"
            )
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
                f"source {args.data!r} has no documents in the {args.split!r} split (filter {args.filter!r}); "
                "use --split all or a larger --validation-fraction"
            )
        result = evaluate_bpb(
            model.to(args.device),
            tokenizer,
            texts,
            seq_len=seq_len,
            batch_size=args.batch_size,
            device=args.device,
        )
    except DataError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT
    report = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": args.split,
        "tokenizer": tokenizer.name,
        "seq_len": seq_len,
        "docs": result.docs,
        "tokens": result.tokens,
        "bytes": result.bytes,
        "nll_nats": result.nll_nats,
        "bpb": result.bpb,
    }
    print(
        f"bpb {result.bpb:.4f}  ({result.docs} docs, {result.tokens} tokens, {result.bytes} bytes, "
        f"tokenizer {tokenizer.name}, seq_len {seq_len})"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0

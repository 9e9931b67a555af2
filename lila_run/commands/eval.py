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

from lila_data.errors import DataError
from lila_data.evaluate import DEFAULT_EVAL_BATCH
from lila_data.tokenizer import SHIPPED_TOKENIZERS, load_tokenizer
from lila_net.config import DataSection

from .documents import add_document_flags, selected_texts

logger = logging.getLogger(__name__)

TOKENIZER_PREFIX = "fineweb-edu-"
EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``lila`` parser."""
    parser = subparsers.add_parser("eval", help="bits per byte of a checkpoint on held-out text")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (save_checkpoint output)")
    add_document_flags(parser, split="validation", split_help="documents to score",
                       max_docs=DataSection.validation_max_docs, max_docs_help="score at most N documents",
                       filter_example="int_score >= 4")
    parser.add_argument("--tokenizer", default=None, help="tokenizer name or JSON path (default: see above)")
    parser.add_argument("--seq-len", type=int, default=None, help="window length (default: model block_size)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_EVAL_BATCH, help="windows per forward pass")
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
        texts = selected_texts(args, empty="use --split all or a larger --validation-fraction")
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

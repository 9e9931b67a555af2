# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila eval``: bits per byte of a checkpoint on held-out text.

    lila eval --checkpoint out/ckpt --data bundled:fineweb-edu-sample --max-docs 64 --out eval.json

Which documents are scored, unless ``--split`` says: on the run's own data (the sources a peer checkpoint
records in its extra data, key ``data_sources``; else the bundled sample, the default run's data) its
validation split, the documents training skipped, with the run's ``validation_fraction`` and at most
``validation_max_docs`` of them; on any other data, every document. One line on screen says what was
scored and why ("scored 12 of 120 documents of ...: ..."). The tokenizer is the one the checkpoint names in its extra data
(key ``tokenizer``), else the shipped ``fineweb-edu-<vocab_size>``; the window length is the model's
``block_size`` unless ``--seq-len`` is given. See :mod:`lila_data.evaluate` for how bpb is computed.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lila_data.documents import DocumentTally
from lila_data.errors import DataError
from lila_data.evaluate import DEFAULT_EVAL_BATCH
from lila_data.sources import DEFAULT_SOURCE
from lila_data.tokenizer import SHIPPED_TOKENIZERS, load_tokenizer
from lila_data.validation import DEFAULT_VALIDATION_FRACTION
from lila_net.config import DataSection

from .documents import add_document_flags, selected_texts

logger = logging.getLogger(__name__)

TOKENIZER_PREFIX = "fineweb-edu-"
RUN_SOURCES_KEY = "data_sources"  # checkpoint extra data: the run's source specs (peer checkpoints write it)
RUN_FRACTION_KEY = "validation_fraction"  # checkpoint extra data: the run's held-out share


@dataclass(frozen=True)
class Selection:
    """The documents ``lila eval`` scores: ``split`` at ``fraction``, at most ``max_docs`` (None: all), and
    ``why`` in words for the line that says so."""

    split: str
    fraction: float
    max_docs: int | None
    why: str


def choose_documents(args: argparse.Namespace, extra: dict[str, Any]) -> Selection:
    """The flags where given; else the run's validation split on the run's own data, every document of
    any other (see the module docstring)."""
    run_sources = extra.get(RUN_SOURCES_KEY) or [DEFAULT_SOURCE]
    own = args.data in run_sources
    fraction = args.validation_fraction
    if fraction is None:
        fraction = float(extra.get(RUN_FRACTION_KEY, DEFAULT_VALIDATION_FRACTION)) if own else DEFAULT_VALIDATION_FRACTION
    if args.split is not None:
        split = args.split
        what = {"all": "every document", "validation": f"the validation split ({fraction:g} held out by document id)",
                "train": f"the training split (all but the {fraction:g} held out)"}[split]
        why = f"{what}, as --split {split} asked"
    elif own:
        split = "validation"
        why = (f"the run's validation split ({fraction:g} of its documents, held out of training); "
               "pass --split all to score every document")
    else:
        split, why = "all", "every document, as this is not the data the run trained on"
    max_docs = args.max_docs
    if max_docs is None and split == "validation":
        max_docs = DataSection.validation_max_docs
    return Selection(split=split, fraction=fraction, max_docs=max_docs, why=why)


def scored_line(args: argparse.Namespace, selection: Selection, tally: DocumentTally) -> str:
    """One line: how many documents of which source were scored, out of how many, and why those."""
    where = args.data + (f" that pass --filter {args.filter!r}" if args.filter else "")
    if tally.complete:
        return f"scored {tally.kept} of {tally.read} documents of {where}: {selection.why}"
    return (f"scored the first {tally.kept} documents of {where} (--max-docs {selection.max_docs}; raise it "
            f"to score more): {selection.why}")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``lila`` parser."""
    parser = subparsers.add_parser("eval", help="bits per byte of a checkpoint on held-out text")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (save_checkpoint output)")
    add_document_flags(parser, split=None,
                       split_help="documents to score (default: the validation split of the run's own data, "
                                  "every document of other data)",
                       max_docs=None,
                       max_docs_help=f"score at most N documents (default: {DataSection.validation_max_docs} of "
                                     "a validation split, else all)",
                       filter_example="int_score >= 4", validation_fraction=None,
                       fraction_help="share of documents held out for validation (default: the run's, from the "
                                     f"checkpoint, else {DEFAULT_VALIDATION_FRACTION})")
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
    """Evaluate and print which documents were scored and the bpb (and write JSON with ``--out``). Bad input
    raises :class:`DataError` (``lila``'s main: one line, exit 2)."""
    from lila_data.evaluate import evaluate_bpb

    model, extra = _load_model(args.checkpoint, args.device)
    extra = extra or {}
    config = model.config
    tokenizer = load_tokenizer(pick_tokenizer(args.tokenizer, extra, config.vocab_size))
    seq_len = args.seq_len or config.block_size
    if seq_len > config.block_size:
        raise DataError(f"--seq-len {seq_len} exceeds the model's block_size {config.block_size}; lower it")
    selection = choose_documents(args, extra)
    tally = DocumentTally()
    texts = selected_texts(args, empty="use --split all or a larger --validation-fraction", split=selection.split,
                           fraction=selection.fraction, max_docs=selection.max_docs, tally=tally)
    result = evaluate_bpb(model.to(args.device), tokenizer, texts, seq_len=seq_len, batch_size=args.batch_size,
                          device=args.device)
    report = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": selection.split,
        "validation_fraction": selection.fraction,
        "docs_read": tally.read,
        "docs_read_all": tally.complete,
        "tokenizer": tokenizer.name,
        "seq_len": seq_len,
        "docs": result.docs,
        "tokens": result.tokens,
        "bytes": result.bytes,
        "nll_nats": result.nll_nats,
        "bpb": result.bpb,
    }
    print(scored_line(args, selection, tally))
    print(
        f"bpb {result.bpb:.4f}  ({result.docs} docs, {result.tokens} tokens, {result.bytes} bytes, "
        f"tokenizer {tokenizer.name}, seq_len {seq_len})"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Weight-export benchmark: file size and validation bpb of exported models against the fp32 checkpoint.

    python -m bench.model --quick --save-checkpoint /tmp/ckpt      # a trained model (or any checkpoint)
    python -m bench.export --checkpoint /tmp/ckpt --quick --out export.json

Exports the checkpoint with E8 at 2, 3 and 4 bits (plus 0.25 bits of scales), int4, int8 and fp16,
reloads each file with :func:`lila_codec.export.load_model` and scores bits per byte on the held-out
split of the source with lila_data's ``evaluate_bpb``. Targets: at ≤ 4.25 bits per weight
within 0.05 bpb of fp32, at 2.25 bits within 0.2 bpb.

JSON: ``{"checkpoint", "fp32_bpb", "exports": [{"name", "file_bytes", "compression",
"bits_per_weight", "bpb", "delta_bpb"}], "targets": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from lila_codec.export import export_model, load_model

logger = logging.getLogger("bench.export")

EXPORTS = [("e8 R=4", "e8", 4), ("e8 R=3", "e8", 3), ("e8 R=2", "e8", 2), ("int4", "int4", 4), ("int8", "int8", 8),
           ("fp16", "fp16", 16)]  # fmt: skip
QUICK_DOCS, FULL_DOCS = 16, None
BATCH_SIZE = 8
TARGETS = {"e8 R=4": 0.05, "e8 R=2": 0.2}  # allowed bpb increase over fp32


def bpb(model, tokenizer, texts: list[str], seq_len: int) -> float:
    from lila_data.evaluate import evaluate_bpb

    return evaluate_bpb(model, tokenizer, texts, seq_len=seq_len, batch_size=BATCH_SIZE, device="cpu").bpb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--quick", action="store_true", help=f"score {QUICK_DOCS} validation documents")
    parser.add_argument("--source", default="bundled:fineweb-edu-sample")
    parser.add_argument("--seq-len", type=int, default=None, help="window length (default: model block_size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    from lila_data import iter_validation_texts, load_tokenizer

    model, extra = load_model(args.checkpoint)
    tokenizer = load_tokenizer(extra.get("tokenizer") or f"fineweb-edu-{model.config.vocab_size}")
    seq_len = args.seq_len or model.config.block_size
    texts = list(iter_validation_texts(args.source, max_docs=QUICK_DOCS if args.quick else FULL_DOCS))
    base = bpb(model, tokenizer, texts, seq_len)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    print(f"fp32 checkpoint: bpb {base:.4f} on {len(texts)} documents, {fp32_bytes} bytes of weights")
    print(f"{'export':8s} {'bytes':>10s} {'x smaller':>9s} {'bits/w':>7s} {'bpb':>8s} {'Δbpb':>8s}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, quant, bits in EXPORTS:
            path = Path(tmp) / f"{quant}{bits}.lila"
            report = export_model(args.checkpoint, path, quant=quant, bits=bits)
            loaded, _ = load_model(path)
            value = bpb(loaded, tokenizer, texts, seq_len)
            row = {
                "name": name,
                "file_bytes": report.file_bytes,
                "compression": report.compression,
                "bits_per_weight": report.bits_per_quantized_weight,
                "bpb": value,
                "delta_bpb": value - base,
            }
            rows.append(row)
            print(
                f"{name:8s} {row['file_bytes']:10d} {row['compression']:9.2f} {row['bits_per_weight']:7.3f} "
                f"{value:8.4f} {value - base:+8.4f}",
                flush=True,
            )
    targets = {
        name: {"delta_bpb": r["delta_bpb"], "limit": TARGETS[name], "met": r["delta_bpb"] <= TARGETS[name]}
        for r in rows
        for name in [r["name"]]
        if name in TARGETS
    }
    for name, t in targets.items():
        print(
            f"target {name}: Δbpb {t['delta_bpb']:+.4f} (limit {t['limit']}) {'MET' if t['met'] else 'NOT MET'}"
        )
    if args.out:
        result = {"checkpoint": str(args.checkpoint), "fp32_bpb": base, "docs": len(texts), "exports": rows,
                  "targets": targets}  # fmt: skip
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

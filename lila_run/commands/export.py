# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila export``: write a compact, quantized model file from a checkpoint.

    lila export --checkpoint out/ckpt --quant e8 --bits 4 --out model-e8r4.lila

Every 2-D weight matrix (embeddings too) is quantized (``e8``: E8 lattice code at
``--bits`` bits per weight plus 16 bits of scale per 64 weights; ``int4``/``int8``: block
int with tuned scales; ``fp16``); other parameters stay float32. The file loads with
:func:`lila_codec.export.load_model`, like a checkpoint directory. Prints the file size
and the compression against the fp32 weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lila_net.exits import CommandError

logger = logging.getLogger(__name__)

BYTES_PER_MB = 2**20


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the ``lila`` parser."""
    from lila_codec.e8 import ALLOWED_BITS
    from lila_codec.export import DEFAULT_BITS, QUANT_CHOICES

    parser = subparsers.add_parser(
        "export",
        help="write a compact quantized model file",
        description="Quantize a checkpoint's weights (E8 lattice, int4/int8 or fp16) into one file.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (save_checkpoint output)")
    parser.add_argument(
        "--quant", choices=QUANT_CHOICES, default="e8", help="weight quantization (default e8)"
    )
    parser.add_argument(
        "--bits",
        type=int,
        choices=ALLOWED_BITS,
        default=DEFAULT_BITS,
        help=f"E8 bits per weight, before the 0.25 bits of block scales (default {DEFAULT_BITS})",
    )
    parser.add_argument("--out", required=True, help="output file")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Export and print the size; a bad checkpoint raises (``lila``'s main: one line, exit 2)."""
    from lila_codec.export import export_model

    if not Path(args.checkpoint).is_dir():
        raise CommandError(f"checkpoint {args.checkpoint} is not a directory; pass one written by save_checkpoint")
    report = export_model(args.checkpoint, args.out, quant=args.quant, bits=args.bits)  # CheckpointError: exit 2
    print(
        f"wrote {report.path}: {report.file_bytes} bytes ({report.file_bytes / BYTES_PER_MB:.2f} MiB), "
        f"{report.compression:.2f}x smaller than fp32 ({report.fp32_bytes} bytes); "
        f"{report.quantized_params} of {report.total_params} parameters quantized at "
        f"{report.bits_per_quantized_weight:.3f} bits each"
    )
    return 0

# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila generate``: continue a prompt with a saved LILA checkpoint.

The tokenizer is the one named in the checkpoint's ``extra.json`` (key ``tokenizer``), else
lila_data's default. ``--resonance-monitor`` prints, per generated token, the mean max
cosine of the final hidden state to the lattice directions (see lila_model.generate).
"""

from __future__ import annotations

import argparse
import logging

import torch

from lila_net.exits import CommandError

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 100
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.95
DEFAULT_REPETITION_PENALTY = 1.1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Continue a prompt with a LILA checkpoint (greedy with --temperature 0).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (model.safetensors + config.json)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="0 = off")
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="1.0 = off")
    parser.add_argument("--repetition-penalty", type=float, default=DEFAULT_REPETITION_PENALTY, help="1.0 = off")
    parser.add_argument("--resonance-monitor", action="store_true", help="print lattice resonance per token")
    parser.add_argument("--tokenizer", default=None, help="tokenizer name (default: the checkpoint's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the context every step")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from lila_codec.export import load_model
    from lila_data import load_tokenizer
    from lila_model.generate import generate

    model, extra = load_model(args.checkpoint, map_location=args.device)  # checkpoint dir or export file
    name = args.tokenizer or extra.get("tokenizer")
    tokenizer = load_tokenizer(name) if name else load_tokenizer()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CommandError(
            f"tokenizer {name or 'default'} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}; pass the checkpoint's tokenizer with --tokenizer"
        )
    ids = [tokenizer.eos_id, *tokenizer.encode(args.prompt)]  # EOS marks the start of a document
    idx = torch.tensor([ids], dtype=torch.long, device=args.device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
    result = generate(
        model, idx, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k or None, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        use_cache=not args.no_cache, resonance_monitor=args.resonance_monitor,
        eos_id=tokenizer.eos_id, generator=generator,
    )
    new = [t for t in result.new_tokens[0].tolist() if t != tokenizer.eos_id]
    print(args.prompt + tokenizer.decode(new))
    if result.resonance is not None:
        print("resonance per token (max cosine to the lattice directions):")
        for step, (token, score) in enumerate(zip(result.new_tokens[0].tolist(), result.resonance[0].tolist(), strict=True)):
            print(f"{step:4d}  {score:.4f}  {tokenizer.decode([token])!r}")
    return 0

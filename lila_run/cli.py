# SPDX-License-Identifier: AGPL-3.0-or-later
"""The ``lila`` command: local tools around a LILA run.

Sub-commands live one per module in :mod:`lila_run.commands`; each module offers
``add_parser(subparsers)`` (which sets ``func``) and ``run(args) -> int``. A command fails by raising
:class:`~lila_net.exits.CommandError` or one of the project's input errors (bad config, data, checkpoint):
:func:`main` prints its one line and returns its exit status (a traceback only with ``-v``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lila_codec.errors import CodecError, ExportError
from lila_data.errors import DataError
from lila_model.checkpoint import CheckpointError
from lila_net.config import ConfigError
from lila_net.exits import ExitStatus, run_command

# errors whose message names the problem and the fix: a bad input, exit 2
INPUT_ERRORS = (ConfigError, DataError, CheckpointError, ExportError, CodecError)
COMMAND_MODULES = ("up", "generate", "eval", "export", "tokenizer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lila",
        description="LILA Network local tools: run a local network, generate, evaluate, export, tokenizers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback above an error's one-line message")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"lila_run.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(f"lila {args.command}", lambda: args.func(args), verbose=args.verbose,
                       expected=dict.fromkeys(INPUT_ERRORS, ExitStatus.BAD_INPUT))


if __name__ == "__main__":
    sys.exit(main())

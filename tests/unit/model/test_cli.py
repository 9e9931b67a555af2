# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila generate`` loads a checkpoint and its tokenizer and prints the continuation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from lila_data import load_tokenizer
from lila_model.checkpoint import save_checkpoint
from lila_model.config import get_preset
from lila_model.generate import generate
from lila_model.model import LilaLM
from lila_net.exits import CommandError, ExitStatus
from lila_run.commands import generate as generate_command

TOKENIZER = "fineweb-edu-2048"
PROMPT = "The water cycle"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lila")
    generate_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def generate_args(checkpoint: Path, *options: str) -> argparse.Namespace:
    """``lila generate`` of PROMPT from ``checkpoint`` on the CPU, with ``options``."""
    return parse(
        ["generate", "--checkpoint", str(checkpoint), "--prompt", PROMPT, *options, "--device", "cpu"]
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LilaLM]:
    torch.manual_seed(0)
    model = LilaLM(
        get_preset(
            "debug",
            variant="e8",
            vocab_size=2048,
            block_size=64,
            n_layers=1,
            tie_embeddings=False,
            init_std=0.1,
        )
    ).eval()
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(path, model, extra={"tokenizer": TOKENIZER})
    return path, model


def test_generate_prints_the_greedy_continuation(checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    path, model = checkpoint
    args = generate_args(path, "--max-new-tokens", "8", "--temperature", "0", "--repetition-penalty", "1.0")
    assert args.func is generate_command.run
    assert generate_command.run(args) == 0
    tokenizer = load_tokenizer(TOKENIZER)
    idx = torch.tensor([[tokenizer.eos_id, *tokenizer.encode(PROMPT)]])
    expected = generate(model, idx, max_new_tokens=8, temperature=0.0, eos_id=tokenizer.eos_id)
    new = [t for t in expected.new_tokens[0].tolist() if t != tokenizer.eos_id]
    assert capsys.readouterr().out == PROMPT + tokenizer.decode(new) + "\n"


def test_generate_resonance_monitor_prints_one_line_per_token(
    checkpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = checkpoint
    args = generate_args(path, "--max-new-tokens", "5", "--seed", "3", "--resonance-monitor")
    assert generate_command.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("resonance per token (max cosine to the lattice directions):")
    rows = lines[header + 1 :]
    assert 1 <= len(rows) <= 5
    for row in rows:
        score = float(row.split()[1])
        assert 0.0 < score <= 1.0


def test_generate_rejects_a_tokenizer_larger_than_the_model(checkpoint) -> None:
    path, _ = checkpoint
    args = generate_args(path, "--tokenizer", "fineweb-edu-8192")
    with pytest.raises(CommandError, match="has 8192 tokens but the model only 2048") as refused:
        generate_command.run(args)
    assert refused.value.status is ExitStatus.BAD_INPUT

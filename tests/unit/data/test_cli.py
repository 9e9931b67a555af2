# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila tokenizer train`` and ``lila eval`` end to end (in process, through their argparse parsers)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from lila_data import iter_texts, iter_validation_texts, load_tokenizer
from lila_run.cli import main
from lila_run.commands import eval as eval_command
from lila_run.commands import tokenizer as tokenizer_command


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lila")
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_tokenizer_train_writes_a_loadable_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tok.json"
    code = _run(
        tokenizer_command,
        [
            "tokenizer",
            "train",
            "--data",
            "bundled:fineweb-edu-sample",
            "--vocab",
            "400",
            "--max-docs",
            "20",
            "--out",
            str(out),
        ],
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained on 20 documents" in printed and "vocab_size 400" in printed
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 400 and tok.decode(tok.encode("Learning is fun 🎓")) == "Learning is fun 🎓"


def test_tokenizer_train_reports_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["tokenizer", "train", "--data", "parquet:/no/such/dir", "--out", str(tmp_path / "t.json")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lila_model.checkpoint import save_checkpoint
    from lila_model.config import get_preset
    from lila_model.model import LilaLM

    torch.manual_seed(0)
    model = LilaLM(get_preset("debug", vocab_size=2048, block_size=64))
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "model", model, extra={"tokenizer": "fineweb-edu-2048"}
    )


def test_eval_scores_the_validation_split(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "eval.json"
    code = _run(eval_command, ["eval", "--checkpoint", str(checkpoint), "--max-docs", "2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    texts = list(iter_validation_texts("bundled:fineweb-edu-sample", max_docs=2))
    tok = load_tokenizer("fineweb-edu-2048")
    assert report["docs"] == 2 and report["tokenizer"] == "fineweb-edu-2048" and report["seq_len"] == 64
    assert report["bytes"] == sum(len(t.encode()) for t in texts)
    assert report["tokens"] == sum(len(tok.encode(t)) + 1 for t in texts)
    assert report["bpb"] == pytest.approx(report["nll_nats"] / math.log(2) / report["bytes"], rel=1e-12)
    # an untrained model is close to uniform over the vocabulary
    uniform = math.log2(2048) * report["tokens"] / report["bytes"]
    assert 0.8 * uniform < report["bpb"] < 1.3 * uniform
    assert f"bpb {report['bpb']:.4f}" in capsys.readouterr().out


def test_eval_bad_inputs(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--seq-len", "65"]) == 2
    assert "exceeds the model's block_size 64" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", "hf:HuggingFaceFW/fineweb-edu?config=x"]) == 2
    assert "unknown config 'x'" in capsys.readouterr().err


def _own_file(tmp_path: Path, docs: int) -> str:
    """A parquet file of ``docs`` documents (the sample's texts under new ids): data that is not the run's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = list(iter_texts("bundled:fineweb-edu-sample", max_docs=docs))
    pq.write_table(pa.table({"id": [f"mine-{i}" for i in range(docs)], "text": texts}), tmp_path / "docs.parquet")
    return f"parquet:{tmp_path / 'docs.parquet'}"


def test_eval_scores_every_document_of_other_data_and_says_which(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _own_file(tmp_path, 30)
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", data, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["split"], report["docs"], report["docs_read"], report["docs_read_all"]) == ("all", 30, 30, True)
    printed = capsys.readouterr().out
    assert f"scored 30 of 30 documents of {data}: every document, as this is not the data the run trained on" in printed
    # asked for the validation split of the same file: the line says how many of how many, and why
    validation = sum(1 for _ in iter_texts(data, split="validation"))
    assert 0 < validation < 30
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", data, "--split", "validation"]) == 0
    assert f"scored {validation} of 30 documents of {data}: the validation split" in capsys.readouterr().out


def test_eval_of_the_runs_own_data_says_it_scored_the_validation_split(
    checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    total = sum(1 for _ in iter_texts("bundled:fineweb-edu-sample"))
    held_out = sum(1 for _ in iter_texts("bundled:fineweb-edu-sample", split="validation"))
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"scored {held_out} of {total} documents of bundled:fineweb-edu-sample: the run's "
                           "validation split")
    assert "pass --split all to score every document" in line


def test_pick_tokenizer_order() -> None:
    assert eval_command.pick_tokenizer("mine.json", {"tokenizer": "fineweb-edu-2048"}, 8192) == "mine.json"
    assert eval_command.pick_tokenizer(None, {"tokenizer": "fineweb-edu-2048"}, 8192) == "fineweb-edu-2048"
    assert eval_command.pick_tokenizer(None, {}, 8192) == "fineweb-edu-8192"
    with pytest.raises(ValueError, match="names no tokenizer"):
        eval_command.pick_tokenizer(None, {}, 5000)

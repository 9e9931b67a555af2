# SPDX-License-Identifier: AGPL-3.0-or-later
"""Tokenizers: shipped files verified and reproducible, exact round trip on hostile text, clear errors."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from lila_data import EOS_TOKEN, DataError, iter_texts, load_tokenizer, train_tokenizer
from lila_data import tokenizer as tokenizer_module

SHIPPED = {"fineweb-edu-8192": 8192, "fineweb-edu-2048": 2048}
RECIPE_TOKENIZERS_VERSION = "0.23.3"

HOSTILE = [
    "",
    "plain ASCII, with punctuation!?",
    "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 family and flags",
    "combining marks: e\u0301 a\u0308\u0323 \u0915\u094d\u0937 Z\u0351\u0352\u0353",
    "NUL \x00 inside and at the end\x00",
    "control chars \x01\x02\x7f\x1b[31m and \r\n\t line endings",
    "CJK 漢字かなカナ 한국어 and RTL שָׁלוֹם مرحبا بالعالم",
    "bidi overrides \u202e\u2066 zero-width \u200b\u200c\u200d\ufeff BOM",
    "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 \U0010fffd private use \ue000",
    "   leading and trailing spaces   ",
    f"a literal {EOS_TOKEN} in the text",
    "\u00a0non-breaking\u2028line\u2029separators",
    "x" * 5000,
]


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def tok(request):
    return load_tokenizer(request.param)


def test_shipped_tokenizers_have_their_sizes_and_eos(tok) -> None:
    assert tok.vocab_size == SHIPPED[tok.name]
    assert tok.backend.id_to_token(tok.eos_id) == EOS_TOKEN
    assert load_tokenizer().name == "fineweb-edu-8192"


@pytest.mark.parametrize("text", HOSTILE)
def test_round_trip_hostile_strings(tok, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_id not in ids  # only the packer emits EOS, never the text


def test_encode_batch_equals_encode(tok) -> None:
    assert tok.encode_batch(HOSTILE) == [tok.encode(t) for t in HOSTILE]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_any_valid_unicode(text: str) -> None:
    tok = load_tokenizer("fineweb-edu-2048")
    assert tok.decode(tok.encode(text)) == text


def test_lone_surrogates_raise_a_clear_error(tok) -> None:
    with pytest.raises(DataError, match=r"lone surrogate '\\ud800' at character 2.*errors='replace'"):
        tok.encode("ab\ud800cd")
    with pytest.raises(DataError, match=r"text #1 is not valid UTF-8"):
        tok.encode_batch(["fine", "bad \udfff"])
    with pytest.raises(DataError, match="not a str"):
        tok.encode_batch(["ok", b"bytes"])


def test_decode_rejects_ids_outside_the_vocabulary(tok) -> None:
    with pytest.raises(DataError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])


def test_compression_on_fineweb_text() -> None:
    """The shipped merges compress English web text well beyond bytes (a broken merge table would not)."""
    texts = list(iter_texts("bundled:fineweb-edu-sample", split="validation"))
    total_bytes = sum(len(t.encode()) for t in texts)
    for name, minimum in [("fineweb-edu-8192", 3.5), ("fineweb-edu-2048", 2.5)]:
        tokens = sum(len(ids) for ids in load_tokenizer(name).encode_batch(texts))
        assert total_bytes / tokens > minimum, (name, total_bytes / tokens)


def test_checksum_is_verified_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = Path(tokenizer_module.__file__).parent / "assets"
    for path in assets.iterdir():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(tokenizer_module, "_assets_dir", lambda: tmp_path)
    assert load_tokenizer("fineweb-edu-2048").vocab_size == 2048
    damaged = tmp_path / "fineweb-edu-2048.json"
    damaged.write_text(damaged.read_text().replace('"a"', '"b"', 1))
    with pytest.raises(DataError, match=r"fails its checksum.*reinstall"):
        load_tokenizer("fineweb-edu-2048")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_recipe_reproduces_the_shipped_files(name: str, tmp_path: Path) -> None:
    if tokenizers.__version__ != RECIPE_TOKENIZERS_VERSION:
        pytest.skip(f"shipped files were trained with tokenizers {RECIPE_TOKENIZERS_VERSION}")
    texts = list(iter_texts("bundled:fineweb-edu-sample", split="train", fraction=0.1))
    trained = train_tokenizer(texts, vocab_size=SHIPPED[name])
    digest = trained.save(tmp_path / "t.json")
    assert digest == tokenizer_module.shipped_checksums()[f"{name}.json"]
    shipped = (Path(tokenizer_module.__file__).parent / "assets" / f"{name}.json").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == digest


def test_load_by_path_and_bad_names(tmp_path: Path) -> None:
    trained = train_tokenizer(["some text to learn from " * 20], vocab_size=300)
    trained.save(tmp_path / "mine.json")
    loaded = load_tokenizer(str(tmp_path / "mine.json"))
    assert loaded.name == "mine" and loaded.vocab_size == trained.vocab_size
    assert loaded.decode(loaded.encode("learn text")) == "learn text"
    with pytest.raises(DataError, match="neither shipped"):
        load_tokenizer("gpt-5")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read"):
        load_tokenizer(str(tmp_path / "broken.json"))
    with pytest.raises(DataError, match="must be >= 257"):
        train_tokenizer(["x"], vocab_size=100)

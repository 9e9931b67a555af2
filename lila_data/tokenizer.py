# SPDX-License-Identifier: AGPL-3.0-or-later
"""Byte-level BPE tokenizers: the shipped ``fineweb-edu-8192`` / ``fineweb-edu-2048`` and their recipe.

A tokenizer is a ``tokenizers`` BPE model over the 256 byte symbols (GPT-2 style byte-level
pre-tokenizer, no normalizer), plus one special token, ``<|endoftext|>``, the EOS that separates
documents. Because every byte is a symbol and nothing is normalised, ``decode(encode(text)) == text``
for every valid UTF-8 string (emoji, combining marks, NUL, CJK, right-to-left text, ...). A Python
string holding a lone surrogate is not valid UTF-8 and raises :class:`DataError`. A literal
``<|endoftext|>`` inside a document is encoded as ordinary text, so only the packer ever emits EOS.

Shipped files live in ``lila_data/assets`` with their sha256 in ``checksums.json``, verified at every
load; ``assets/RECIPE.md`` records how they were trained (:func:`train_tokenizer` is that recipe).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lila_data.errors import DataError

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
DEFAULT_TOKENIZER = "fineweb-edu-8192"
SHIPPED_TOKENIZERS = ("fineweb-edu-8192", "fineweb-edu-2048")
CHECKSUMS_FILE = "checksums.json"
TOKENIZER_SUFFIX = ".json"
BYTE_ALPHABET_SIZE = 256
DEFAULT_MIN_FREQUENCY = 2
"""A pair must occur this often to be merged. 2 keeps one-off strings out of the vocabulary; raising it
on a small corpus stops training before the requested vocabulary size is reached."""


class LilaTokenizer:
    """A byte-level BPE tokenizer with an EOS token. Build with :func:`load_tokenizer` or :func:`train_tokenizer`."""

    def __init__(self, tokenizer: Tokenizer, *, name: str) -> None:
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise DataError(
                f"tokenizer {name!r} has no {EOS_TOKEN} token; train it with lila tokenizer train"
            )
        tokenizer.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is just text
        self._tokenizer = tokenizer
        self._batch_encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.name = name
        self.eos_id: int = eos
        self.vocab_size: int = tokenizer.get_vocab_size()

    def __repr__(self) -> str:
        return f"LilaTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (for benchmarks and tools)."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no EOS added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; the batch is tokenized in parallel by the Rust backend."""
        try:
            encodings = self._batch_encode(list(texts))
        except TypeError:
            _raise_bad_text(texts)
            raise
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; EOS decodes to ``<|endoftext|>``. Ids outside the vocabulary raise DataError."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(
                f"tokenizer {self.name!r}: ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}); "
                "decode with the tokenizer the ids were made with"
            )
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def to_str(self) -> str:
        """The tokenizer as ``tokenizers`` JSON."""
        return self._tokenizer.to_str()

    def save(self, path: str | Path) -> str:
        """Write the tokenizer JSON to ``path`` and return its sha256 (hex)."""
        data = self.to_str().encode("utf-8")
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()


def _raise_bad_text(texts: Sequence[str]) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text #{index} is a {type(text).__name__}, not a str; decode bytes to str first")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"text #{index} is not valid UTF-8: a lone surrogate {text[exc.start]!r} at character "
                f"{exc.start}; repair it (e.g. bytes.decode('utf-8', errors='replace')) before tokenizing"
            ) from exc


def _assets_dir() -> Path:
    return Path(str(resources.files("lila_data") / "assets"))


def shipped_checksums() -> dict[str, str]:
    """``{file name: sha256}`` of the shipped tokenizer files."""
    return json.loads((_assets_dir() / CHECKSUMS_FILE).read_text(encoding="utf-8"))


def load_tokenizer(name: str = DEFAULT_TOKENIZER) -> LilaTokenizer:
    """Load a shipped tokenizer by name (checksum verified), or any tokenizer JSON file by path."""
    if name in SHIPPED_TOKENIZERS:
        file_name = name + TOKENIZER_SUFFIX
        data = (_assets_dir() / file_name).read_bytes()
        expected = shipped_checksums().get(file_name)
        actual = hashlib.sha256(data).hexdigest()
        if expected != actual:
            raise DataError(
                f"shipped tokenizer {name!r} fails its checksum (expected {expected}, got {actual}): the "
                "installation is damaged or the file was edited; reinstall lila-network"
            )
        return LilaTokenizer(Tokenizer.from_str(data.decode("utf-8")), name=name)
    path = Path(name).expanduser()
    if path.suffix != TOKENIZER_SUFFIX or not path.is_file():
        raise DataError(
            f"tokenizer {name!r} is neither shipped ({', '.join(SHIPPED_TOKENIZERS)}) nor an existing "
            f"{TOKENIZER_SUFFIX} file; pick a shipped name or train one with lila tokenizer train"
        )
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception on malformed JSON
        raise DataError(
            f"tokenizer file {path} cannot be read ({exc}); re-create it with lila tokenizer train"
        ) from exc
    return LilaTokenizer(backend, name=path.stem)


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
    name: str = "trained",
) -> LilaTokenizer:
    """Train a byte-level BPE tokenizer with EOS on ``texts`` (the recipe of the shipped files).

    ``vocab_size`` counts the 256 byte symbols, EOS and the merges. Small vocabularies (2048) give
    longer sequences but a smaller embedding table; 8192 is a good size for models of 10–100 M
    parameters. On a small corpus training can stop early (fewer frequent pairs than requested);
    check ``vocab_size`` of the result. Training is deterministic for a given text order.
    """
    minimum = BYTE_ALPHABET_SIZE + 1
    if vocab_size < minimum:
        raise DataError(
            f"vocab_size={vocab_size}: must be >= {minimum} (256 bytes + EOS); 8192 is the default"
        )
    if min_frequency < 1:
        raise DataError(f"min_frequency={min_frequency}: must be >= 1")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    result = LilaTokenizer(backend, name=name)
    if result.vocab_size < vocab_size:
        logger.warning(
            "tokenizer training stopped at %d tokens (asked %d): the corpus has too few frequent pairs; "
            "use more text or a lower min_frequency",
            result.vocab_size,
            vocab_size,
        )
    return result

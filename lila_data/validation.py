# SPDX-License-Identifier: AGPL-3.0-or-later
"""The held-out validation split: a document is held out when a stable hash of its id says so.

The hash is sha256 of the id's UTF-8 bytes; its first 8 bytes, read as a big-endian integer, are
compared with ``fraction · 2⁶⁴``. The split therefore depends on nothing but the id and the fraction:
every peer, the coordinator and the evaluator agree without talking, on any machine and any Python.
Raising the fraction only moves documents from train to validation, never back.

Tuning ``fraction``: 0.05–0.1 for the small bundled sample (enough documents for a stable bits-per-byte),
0.001–0.01 for the full FineWeb-Edu dataset (millions of documents). Zero holds nothing out; a fraction
near 1 leaves almost nothing to train on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from lila_data.errors import DataError

DEFAULT_VALIDATION_FRACTION = 0.1
SPLITS = ("train", "validation", "all")
_HASH_BYTES = 8
_HASH_RANGE = 2 ** (8 * _HASH_BYTES)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"validation fraction {fraction!r} is outside [0, 1]; use e.g. 0.1 (10% held out)")


def _hash_point(doc_id: str) -> int:
    digest = hashlib.sha256(doc_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:_HASH_BYTES], "big")


def is_validation(doc_id: str, fraction: float) -> bool:
    """True when document ``doc_id`` belongs to the held-out validation split of size ``fraction``."""
    _check_fraction(fraction)
    return _hash_point(doc_id) < fraction * _HASH_RANGE


def split_mask(doc_ids: Sequence[str], *, split: str, fraction: float) -> np.ndarray:
    """Boolean mask of the documents that belong to ``split`` ("train", "validation" or "all")."""
    check_split(split)
    if split == "all":
        return np.ones(len(doc_ids), dtype=bool)
    _check_fraction(fraction)
    threshold = fraction * _HASH_RANGE
    held_out = np.fromiter((_hash_point(i) < threshold for i in doc_ids), dtype=bool, count=len(doc_ids))
    return held_out if split == "validation" else ~held_out


def check_split(split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The document filter language and the validation split."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from lila_data import DataError, is_validation, parse_filter
from lila_data.filters import Clause
from lila_data.validation import split_mask

TABLE = pa.table(
    {
        "text": ["a", "b", "c", "d", "e"],
        "id": ["1", "2", "3", "4", "5"],
        "int_score": [2, 4, None, 5, 4],
        "score": [2.4, 3.6, 4.9, 4.6, 4.2],
        "language": ["en", "en", "fr", None, "de"],
    }
)


def test_parse_builds_clauses() -> None:
    parsed = parse_filter("int_score >= 4 and language == 'en' and score<4.5e0")
    assert parsed.clauses == (
        Clause("int_score", ">=", 4),
        Clause("language", "==", "en"),
        Clause("score", "<", 4.5),
    )
    assert parsed.columns == ("int_score", "language", "score")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("int_score >= 4", [False, True, False, True, True]),
        ("int_score > 4", [False, False, False, True, False]),
        ("int_score == 4", [False, True, False, False, True]),
        ("int_score != 4", [True, False, False, True, False]),
        ("score <= 3.6", [True, True, False, False, False]),
        ('language == "en" and int_score >= 4', [False, True, False, False, False]),
        ("language != 'en'", [False, False, True, False, True]),
        ("score > -1 and score < 4.5 and int_score >= 4", [False, True, False, False, True]),
    ],
)
def test_mask_and_matches_agree(expression: str, expected: list[bool]) -> None:
    parsed = parse_filter(expression)
    assert parsed.mask(TABLE).tolist() == expected
    assert [parsed.matches(row) for row in TABLE.to_pylist()] == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "is empty"),
        ("int_score >=", "COLUMN OP VALUE"),
        ("int_score = 4", "cannot read"),
        ("int_score >= 4 or score > 1", "joined by 'and'"),
        ("int_score >= 4 and", "joined by 'and'"),
        ("__import__('os') >= 1", "cannot read"),
        ("int_score >= four", "quote strings"),
        ("(int_score >= 4)", "cannot read"),
        ("4 <= int_score", "COLUMN OP VALUE"),
    ],
)
def test_bad_expressions_are_rejected_with_a_fix(expression: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_filter(expression)


def test_type_mismatch_and_missing_column() -> None:
    with pytest.raises(DataError, match=r"quote string values"):
        parse_filter("language >= 4").mask(TABLE)
    with pytest.raises(DataError, match=r"quote string values"):
        parse_filter("int_score == '4'").matches({"int_score": 4})
    with pytest.raises(DataError, match=r"src: filter .* reads column 'dump', which is missing"):
        parse_filter("dump == 'CC'").mask(TABLE, where="src")


def _reference(doc_id: str, fraction: float) -> bool:
    point = int(hashlib.sha256(doc_id.encode()).hexdigest()[:16], 16)
    return point / 2**64 < fraction


def test_validation_split_is_the_documented_hash() -> None:
    ids = [f"doc-{i}" for i in range(5000)]
    for fraction in (0.0, 0.01, 0.1, 0.5, 1.0):
        assert [is_validation(i, fraction) for i in ids] == [_reference(i, fraction) for i in ids]
    held = sum(is_validation(i, 0.1) for i in ids)
    assert 400 < held < 600  # binomial(5000, 0.1): mean 500, sd 21
    assert not any(is_validation(i, 0.0) for i in ids) and all(is_validation(i, 1.0) for i in ids)


def test_growing_the_fraction_only_moves_documents_to_validation() -> None:
    ids = [f"urn:uuid:{i:08x}" for i in range(3000)]
    small = {i for i in ids if is_validation(i, 0.05)}
    large = {i for i in ids if is_validation(i, 0.2)}
    assert small < large


def test_split_mask_matches_is_validation() -> None:
    ids = [f"x{i}" for i in range(200)]
    held = [is_validation(i, 0.3) for i in ids]
    assert split_mask(ids, split="validation", fraction=0.3).tolist() == held
    assert split_mask(ids, split="train", fraction=0.3).tolist() == [not h for h in held]
    assert split_mask(ids, split="all", fraction=0.3).all()
    with pytest.raises(DataError, match="outside"):
        is_validation("x", 1.5)

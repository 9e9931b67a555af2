# SPDX-License-Identifier: AGPL-3.0-or-later
"""Document filters such as ``int_score >= 4``: a tiny, safe expression language (never ``eval``).

Grammar::

    filter  := clause ( "and" clause )*
    clause  := COLUMN OP VALUE
    OP      := "==" | "!=" | "<" | "<=" | ">" | ">="
    VALUE   := number (``4``, ``-1.5``, ``2e3``) | quoted string (``"en"`` or ``'en'``)

Columns are those of the FineWeb-Edu schema (``int_score``, ``score``, ``language``, ``dump``, ...).
A document whose column is null never matches. Filters are applied vectorised on Arrow tables
(:meth:`DocFilter.mask`) when a shard is read; :meth:`DocFilter.matches` evaluates one row (tests, tools).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lila_data.errors import DataError

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|<=|>=|<|>)
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>"[^"]*"|'[^']*')
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)

_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARROW_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_AND = "and"


@dataclass(frozen=True)
class Clause:
    """One comparison ``column op value``."""

    column: str
    op: str
    value: float | int | str


@dataclass(frozen=True)
class DocFilter:
    """A parsed filter expression: the conjunction of its clauses."""

    expression: str
    clauses: tuple[Clause, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the filter reads, in first-use order, without repeats."""
        return tuple(dict.fromkeys(c.column for c in self.clauses))

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Evaluate the filter on one document given as a mapping of column -> value."""
        for clause in self.clauses:
            if clause.column not in row:
                raise DataError(
                    f"filter {self.expression!r} reads column {clause.column!r}, which the document lacks; "
                    "fix the filter or use data that has that column"
                )
            value = row[clause.column]
            if value is None:
                return False
            if isinstance(value, str) != isinstance(clause.value, str):
                raise DataError(_type_mismatch(self.expression, clause, value))
            if not _PY_OPS[clause.op](value, clause.value):
                return False
        return True

    def mask(self, table: pa.Table, *, where: str = "") -> np.ndarray:
        """Boolean numpy mask of the rows of ``table`` that match (nulls never match).

        ``where`` names the data (source and file) in error messages.
        """
        keep = np.ones(table.num_rows, dtype=bool)
        for clause in self.clauses:
            if clause.column not in table.column_names:
                raise DataError(
                    f"{where or 'data'}: filter {self.expression!r} reads column {clause.column!r}, which is "
                    f"missing (columns: {', '.join(table.column_names)}); fix the filter or the data"
                )
            column = table.column(clause.column)
            is_string = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            if is_string != isinstance(clause.value, str) and not pa.types.is_null(column.type):
                raise DataError(f"{where or 'data'}: " + _type_mismatch(self.expression, clause, column.type))
            result = _ARROW_OPS[clause.op](column, pa.scalar(clause.value))
            keep &= pc.fill_null(result, False).to_numpy(zero_copy_only=False).astype(bool)
        return keep


def _type_mismatch(expression: str, clause: Clause, found: Any) -> str:
    wanted = "a quoted string" if isinstance(clause.value, str) else "a number"
    return (
        f"filter {expression!r} compares column {clause.column!r} with {wanted}, but the column holds "
        f'{found!r}; quote string values (language == "en") and leave numbers bare (int_score >= 4)'
    )


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = expression.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise DataError(
                f"filter {expression!r}: cannot read {text[pos:].strip()!r}; write clauses like "
                "'int_score >= 4' joined by 'and'"
            )
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _parse_value(expression: str, kind: str, raw: str) -> float | int | str:
    if kind == "string":
        return raw[1:-1]
    if kind == "number":
        try:
            return int(raw)
        except ValueError:
            return float(raw)
    raise DataError(
        f"filter {expression!r}: expected a number or a quoted string after the operator, got {raw!r}; "
        'quote strings (language == "en")'
    )


def parse_filter(expression: str) -> DocFilter:
    """Parse ``expression`` (see the module grammar). Bad syntax raises :class:`DataError` with a fix."""
    if not isinstance(expression, str) or not expression.strip():
        raise DataError(
            f"filter {expression!r} is empty; write e.g. 'int_score >= 4' or leave the filter unset"
        )
    tokens = _tokenize(expression)
    clauses: list[Clause] = []
    index = 0
    while True:
        chunk = tokens[index : index + 3]
        if len(chunk) < 3 or chunk[0][0] != "word" or chunk[1][0] != "op":
            raise DataError(
                f"filter {expression!r}: each clause must be COLUMN OP VALUE (e.g. 'int_score >= 4'), "
                f"with OP one of {', '.join(_PY_OPS)}"
            )
        if chunk[0][1] == _AND:
            raise DataError(f"filter {expression!r}: 'and' must join two clauses")
        clauses.append(Clause(chunk[0][1], chunk[1][1], _parse_value(expression, *chunk[2])))
        index += 3
        if index == len(tokens):
            break
        if tokens[index] != ("word", _AND) or index + 1 == len(tokens):
            raise DataError(
                f"filter {expression!r}: clauses must be joined by 'and' (no 'or', no parentheses), "
                f"found {tokens[index][1]!r}"
            )
        index += 1
    return DocFilter(expression=expression, clauses=tuple(clauses))

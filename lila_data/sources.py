# SPDX-License-Identifier: AGPL-3.0-or-later
"""Open a data source from its spec string.

Specs (the part before the first ``:`` is the kind):

- ``bundled:fineweb-edu-sample`` — 150 FineWeb-Edu documents shipped in the package (the demo default);
- ``hf:HuggingFaceFW/fineweb-edu?config=sample-10BT`` — the hub dataset, streamed (see ``hub_source``);
- ``parquet:/path/to/file-or-folder`` — local parquet in the FineWeb-Edu schema;
- ``jsonl:/path/to/file-or-folder`` — local JSON lines with the same fields.

Every document needs ``text`` and ``id``; other FineWeb-Edu columns (``dump``, ``url``, ``language``,
``score``, ``int_score``) are read only when a filter uses them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lila_data.errors import DataError
from lila_data.hub_source import HubSource
from lila_data.jsonl_source import JsonlSource
from lila_data.parquet_source import ParquetSource
from lila_data.source_base import Source

BUNDLED = {"fineweb-edu-sample": "sample-10BT-head-150.parquet"}
DEFAULT_SOURCE = "bundled:fineweb-edu-sample"
SPEC_KINDS = ("bundled", "hf", "parquet", "jsonl")

__all__ = ["BUNDLED", "DEFAULT_SOURCE", "Source", "bundled_path", "open_source"]


def bundled_path(name: str) -> Path:
    """Path of a bundled data set's file inside the installed package."""
    if name not in BUNDLED:
        raise DataError(f"source 'bundled:{name}': no such bundled data; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("lila_data") / "bundled" / BUNDLED[name]))


def open_source(spec: str) -> Source:
    """Open the source named by ``spec`` (see the module docstring); bad specs raise :class:`DataError`."""
    if not isinstance(spec, str):
        raise DataError(f"source spec must be a string like {DEFAULT_SOURCE!r}, got {type(spec).__name__}")
    kind, sep, rest = spec.strip().partition(":")
    if not sep or kind not in SPEC_KINDS:
        raise DataError(
            f"source {spec!r}: unknown kind; write one of bundled:fineweb-edu-sample, "
            "hf:HuggingFaceFW/fineweb-edu?config=sample-10BT, parquet:PATH or jsonl:PATH"
        )
    if not rest:
        raise DataError(
            f"source {spec!r}: nothing after '{kind}:'; name the data (a path, dataset or bundled name)"
        )
    if kind == "bundled":
        return ParquetSource(spec, bundled_path(rest))
    if kind == "hf":
        return HubSource.from_spec(spec, rest)
    if kind == "parquet":
        return ParquetSource(spec, Path(rest).expanduser())
    return JsonlSource(spec, Path(rest).expanduser())

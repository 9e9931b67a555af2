# SPDX-License-Identifier: AGPL-3.0-or-later
"""LILA data: sources, tokenizers, shards with resumable readers, packing, curriculum, validation, bpb.

Names are imported lazily (``from lila_data import ShardReader`` loads only what it needs), so that
``lila_data.curriculum`` stays cheap to import for the run config.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "lila_data.errors",
    "Source": "lila_data.source_base",
    "open_source": "lila_data.sources",
    "DEFAULT_SOURCE": "lila_data.sources",
    "LilaTokenizer": "lila_data.tokenizer",
    "load_tokenizer": "lila_data.tokenizer",
    "train_tokenizer": "lila_data.tokenizer",
    "EOS_TOKEN": "lila_data.tokenizer",
    "ShardAddress": "lila_data.shards",
    "ResumePosition": "lila_data.shards",
    "plan_shards": "lila_data.shards",
    "PackedSequence": "lila_data.packing",
    "IGNORE_INDEX": "lila_data.packing",
    "ShardReader": "lila_data.reader",
    "DocFilter": "lila_data.filters",
    "parse_filter": "lila_data.filters",
    "is_validation": "lila_data.validation",
    "DEFAULT_VALIDATION_FRACTION": "lila_data.validation",
    "iter_texts": "lila_data.documents",
    "iter_validation_texts": "lila_data.documents",
    "CurriculumConfig": "lila_data.curriculum",
    "StageConfig": "lila_data.curriculum",
    "ScheduleConfig": "lila_data.curriculum",
    "CurriculumPoint": "lila_data.curriculum",
    "curriculum_at": "lila_data.curriculum",
    "next_source": "lila_data.curriculum",
    "BpbResult": "lila_data.evaluate",
    "evaluate_bpb": "lila_data.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lila_data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__

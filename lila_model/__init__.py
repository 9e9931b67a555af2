# SPDX-License-Identifier: AGPL-3.0-or-later
"""The LILA model family: config and presets, the model, checkpoints, telemetry, generation.

Names are resolved lazily (PEP 562), so ``import lila_model.lattice`` does not pull in the
model code. This package never imports networking code (hivemind, grpc).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LilaConfig": "lila_model.config",
    "PRESETS": "lila_model.config",
    "VARIANTS": "lila_model.config",
    "get_preset": "lila_model.config",
    "nominal_params": "lila_model.config",
    "LilaLM": "lila_model.model",
    "LMOutput": "lila_model.model",
    "compile_model": "lila_model.model",
    "KVCache": "lila_model.attention",
    "save_checkpoint": "lila_model.checkpoint",
    "load_checkpoint": "lila_model.checkpoint",
    "CheckpointError": "lila_model.checkpoint",
    "layer_telemetry": "lila_model.telemetry",
    "LayerStats": "lila_model.telemetry",
    "generate": "lila_model.generate",
    "GenerationResult": "lila_model.generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lila_model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Checkpoints: ``model.safetensors`` (weights and persistent buffers) + ``config.json`` (+ ``extra.json``).

Loading builds the model on the meta device (no allocation, no init work), materializes it
on ``map_location`` and copies the saved tensors in, so a round trip is bit-exact and large
presets load without first initializing random weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lila_model.config import CONFIG_FORMAT_VERSION, LilaConfig
from lila_model.model import LilaLM

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXTRA_FILE = "extra.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or does not match the model it describes."""


def save_checkpoint(directory: str | Path, model: LilaLM, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed); ``extra`` must be JSON-serializable.

    Put the tokenizer name in ``extra["tokenizer"]`` so ``lila generate`` can find it.
    """
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if not isinstance(model, LilaLM):
        raise TypeError(f"save_checkpoint expects a LilaLM, got {type(model).__name__}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "lila", "version": str(CONFIG_FORMAT_VERSION)})
    config = {"format_version": CONFIG_FORMAT_VERSION, **model.config.to_dict()}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if extra is not None:
        (path / EXTRA_FILE).write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
    logger.info("saved checkpoint to %s (%d tensors)", path, len(tensors))
    return path


def load_config(directory: str | Path) -> LilaConfig:
    """The ``LilaConfig`` stored in a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: is {directory} a directory written by save_checkpoint?")
    data = json.loads(path.read_text())
    version = data.pop("format_version", None)
    if version != CONFIG_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}, this lila_model reads {CONFIG_FORMAT_VERSION}; "
            "convert the checkpoint or use a matching lila_model"
        )
    return LilaConfig.from_dict(data)


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[LilaLM, dict[str, Any]]:
    """Load (model, extra) from ``directory``; the model is in eval mode on ``map_location``."""
    path = Path(directory)
    config = load_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: the checkpoint in {path} has a config but no weights")
    device = torch.device(map_location)
    with torch.device("meta"):
        model = LilaLM(config)
    model.to_empty(device=device)
    state = load_file(str(weights), device=str(device))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "the weights and config come from different models"
        )
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        model.init_buffers()
    extra_path = path / EXTRA_FILE
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    model.eval()
    return model, extra

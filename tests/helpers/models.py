# SPDX-License-Identifier: AGPL-3.0-or-later
"""Tiny LILA models for the model tests: the ``debug`` preset cut to two layers, with the lattice attention
in every layer (on queries and keys), built from torch seed 0."""

from __future__ import annotations

import torch

from lila_model.config import get_preset
from lila_model.model import LilaLM


def tiny_model(variant: str, *, vocab_size: int, block_size: int, **overrides) -> LilaLM:
    """A two-layer ``debug`` model of ``variant``; ``overrides`` go to :func:`get_preset`."""
    torch.manual_seed(0)
    return LilaLM(
        get_preset(
            "debug",
            variant=variant,
            vocab_size=vocab_size,
            block_size=block_size,
            n_layers=2,
            leech_every=1,
            leech_targets="qk",
            **overrides,
        )
    )

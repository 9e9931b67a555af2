# SPDX-License-Identifier: AGPL-3.0-or-later
"""Pseudo-gradients recorded from a real network, for the codec benchmarks (``lila-peer join
--record-pseudo-gradients N``, hidden: a benchmark's setting, not a volunteer's).

Every N-th round the vector the peer is about to send — θ_global − θ_local plus the error-feedback
residual, fp32, before encoding — goes to ``WORKDIR/pseudo-gradients/round-NNNNNN.pt`` with what the
codec benchmarks need to tell recordings apart: ``{"vector", "round", "outer_step", "inner_steps",
"preset", "variant", "run"}``. ``python -m bench.codec_truth`` reads them. About 4 bytes per parameter
per file; a failed write (disk full) is logged and training goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .parts import Peer

logger = logging.getLogger(__name__)

RECORD_DIR = "pseudo-gradients"


def record_path(workdir: Path, round_index: int) -> Path:
    return Path(workdir) / RECORD_DIR / f"round-{round_index:06d}.pt"


def maybe_record(peer: Peer, round_index: int, vector: torch.Tensor) -> Path | None:
    """Save ``vector`` ([numel] fp32) when ``round_index`` is a multiple of ``--record-pseudo-gradients``."""
    every = peer.options.record_every
    if not every or round_index % every:
        return None
    path = record_path(peer.options.workdir, round_index)
    tmp = path.with_suffix(".tmp")
    run = peer.run
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"vector": vector.detach().to(torch.float32).clone(), "round": round_index,
                    "outer_step": peer.progress.outer_step, "inner_steps": run.diloco.inner_steps,
                    "preset": run.model.preset, "variant": run.model.variant, "run": run.run.name}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        logger.warning("could not record the pseudo-gradient of round %d to %s: %s", round_index, path, exc)
        return None
    return path

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A peer's local checkpoints, so a restarted peer resumes where it stopped.

Each checkpoint is a directory ``step-NNNNNNNN`` holding the global model as a regular LILA checkpoint
(``model.safetensors`` + ``config.json``, loadable by ``lila eval`` / ``lila generate``), the DiLoCo outer
state (``outer.safetensors``), the inner optimizer state (``inner.pt``, read back with
``weights_only=True``) and ``manifest.json`` with the sha256 of every file.

Writes are atomic: everything goes to a temporary directory, each file is fsynced, the directory is
renamed into place, and only then is ``latest`` updated (itself written to a temp file and renamed).
A crash or a full disk during a write therefore leaves the previous checkpoint intact. Loading verifies
every sha256 and falls back to the previous checkpoint when one is corrupt or partial.
``keep`` checkpoints are kept; older ones are deleted after a successful write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lila_model.checkpoint import load_checkpoint, save_checkpoint
from lila_model.model import LilaLM

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
OUTER_FILE = "outer.safetensors"
INNER_FILE = "inner.pt"
STEP_DIR_FORMAT = "step-{:08d}"
HASH_CHUNK_BYTES = 1 << 20


class CheckpointCorrupt(RuntimeError):
    """A checkpoint's files do not match its manifest."""


@dataclass
class PeerCheckpoint:
    path: Path
    model: LilaLM
    outer_state: dict[str, torch.Tensor]
    inner_state: dict[str, Any]
    meta: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Checkpoints under ``root``; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | Path, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least one checkpoint")
        self.root = Path(root)
        self.keep = keep

    def save(self, *, step: int, model: LilaLM, outer_state: dict[str, torch.Tensor],
             inner_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` atomically and return its directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / STEP_DIR_FORMAT.format(step)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            save_checkpoint(tmp, model, extra=meta)
            save_file({k: v.contiguous() for k, v in outer_state.items()}, str(tmp / OUTER_FILE))
            torch.save(inner_state, tmp / INNER_FILE)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files, "meta": meta}, indent=1))
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        latest_tmp = self.root / f".{LATEST}.tmp"
        latest_tmp.write_text(final.name)
        with open(latest_tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(latest_tmp, self.root / LATEST)
        self._prune()
        return final

    def _steps(self) -> list[Path]:
        """Checkpoint directories oldest first, ordered by their step NUMBER (``step-100000000`` after
        ``step-99999999``, ``step-10`` after ``step-9``): pruning and fallback rely on this order. A
        ``step-*`` directory whose suffix is not a number is not a checkpoint and is left alone."""
        steps = []
        for path in self.root.glob("step-*"):
            suffix = path.name.removeprefix("step-")
            if path.is_dir() and suffix.isdigit():
                steps.append((int(suffix), path.name, path))
        return [path for _, _, path in sorted(steps)]

    def _prune(self) -> None:
        for old in self._steps()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def verify(self, path: Path) -> dict[str, Any]:
        """The manifest of ``path`` after checking every file's sha256; raises CheckpointCorrupt."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointCorrupt(f"{path}: unreadable manifest ({exc})") from exc
        for name, expected in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file() or sha256_file(file) != expected:
                raise CheckpointCorrupt(f"{path}: {name} is missing or does not match its sha256")
        return manifest

    def latest_path(self) -> Path | None:
        """The newest checkpoint that verifies, or None."""
        candidates = self._steps()
        pointer = self.root / LATEST
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if named in candidates:
                candidates.remove(named)
                candidates.append(named)
        for path in reversed(candidates):
            try:
                self.verify(path)
                return path
            except CheckpointCorrupt as exc:
                logger.warning("skipping checkpoint: %s", exc)
        return None

    def load_latest(self, map_location: str = "cpu") -> PeerCheckpoint | None:
        """Load the newest good checkpoint (verified), or None when there is none."""
        path = self.latest_path()
        if path is None:
            return None
        manifest = self.verify(path)
        model, _extra = load_checkpoint(path, map_location=map_location)
        outer = load_file(str(path / OUTER_FILE))
        inner = torch.load(path / INNER_FILE, map_location=map_location, weights_only=True)
        return PeerCheckpoint(path=path, model=model, outer_state=outer, inner_state=inner,
                              meta=manifest.get("meta", {}))

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Where the repository and its shipped files are, for tests at any depth."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs"

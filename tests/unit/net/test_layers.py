# SPDX-License-Identifier: AGPL-3.0-or-later
"""The package layers: every import of the project's own packages goes downwards.

    lila_model  <-  lila_data  <-  lila_codec  <-  lila_net  <-  coordinator, peer  <-  lila_run

``coordinator`` and ``peer`` share only what ``lila_net`` holds and never import each other; nothing
imports ``lila_run``, ``bench`` or ``tests``; the model, data and codec packages import no networking
library. Every import statement counts, including those inside functions (deferred imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

BELOW_NET = {"lila_model", "lila_data", "lila_codec"}
# package -> the project packages it may import
ALLOWED: dict[str, set[str]] = {
    "lila_model": set(),
    "lila_data": {"lila_model"},
    "lila_codec": {"lila_model", "lila_data"},
    "lila_net": BELOW_NET,
    "coordinator": BELOW_NET | {"lila_net"},
    "peer": BELOW_NET | {"lila_net"},
    "lila_run": BELOW_NET | {"lila_net", "coordinator", "peer"},
}
PROJECT = set(ALLOWED) | {"bench", "tests"}
NETWORKING = {"hivemind", "grpc", "aiohttp", "prometheus_client", "socket", "requests"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path`` (relative imports stay inside their package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def crossings(root: Path) -> list[str]:
    """Every import under ``root`` that breaks the layers, as ``file:line: a -> b`` lines."""
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module in imported_modules(path):
                top = module.split(".")[0]
                where = f"{path.relative_to(root)}:{line}"
                if top in PROJECT and top != package and top not in allowed:
                    found.append(f"{where}: {package} -> {module}")
                if package in BELOW_NET and top in NETWORKING:
                    found.append(f"{where}: {package} -> {module} (networking)")
    return found


def test_every_import_goes_down_the_layers() -> None:
    assert crossings(REPO) == []


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"bench", "tests"}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("coordinator", "from peer.averaging import Averager\n", "coordinator -> peer.averaging"),
        ("peer", "def f():\n    import coordinator.credentials\n", "peer -> coordinator.credentials"),
        ("lila_net", "from lila_run.cli import main\n", "lila_net -> lila_run.cli"),
        ("lila_codec", "import hivemind\n", "lila_codec -> hivemind (networking)"),
        ("lila_model", "from bench.network import main\n", "lila_model -> bench.network"),
    ],
)
def test_a_crossing_import_is_reported(tmp_path: Path, package: str, source: str, expected: str) -> None:
    for name in ALLOWED:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / package / "bad.py").write_text(source)
    (tmp_path / "peer" / "fine.py").write_text("from lila_net.config import RunConfig\nfrom . import fine\n")
    assert [line.split(": ", 1)[1] for line in crossings(tmp_path)] == [expected]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila-peer join`` refuses bad options before it contacts anyone (exit 2, a message that names the fix)."""

from __future__ import annotations

import pytest

from peer.cli import main

COORDINATOR = "127.0.0.1:9"  # never contacted: every case is refused before the peer starts


@pytest.mark.parametrize(("args", "message"), [
    ((), "no join token"),
    (("--token", "t", "--straggler-wait", "-1"), "--straggler-wait=-1.0: must be >= 0 (seconds)"),
    (("--token", "t", "--eval-every", "-1"), "--eval-every=-1: must be >= 0 (0: never evaluate)"),
    (("--token", "t", "--keep-checkpoints", "0"), "--keep-checkpoints=0: must be >= 1"),
    (("--token", "t", "--threads", "0"), "--threads=0: must be >= 1"),
])
def test_join_refuses_bad_options_with_exit_2(args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LILA_JOIN_TOKEN", raising=False)
    assert main(["join", COORDINATOR, *args]) == 2
    assert message in capsys.readouterr().err

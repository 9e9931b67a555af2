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


@pytest.mark.parametrize(("code", "status", "words"), [
    ("UNAVAILABLE", 7, "did not answer for 120 s (connection refused); check the address and port"),
    ("DEADLINE_EXCEEDED", 7, "did not answer"),
    ("UNAUTHENTICATED", 6, "refused the join token: connection refused"),
    ("PERMISSION_DENIED", 5, "banned this peer: connection refused"),
    ("FAILED_PRECONDITION", 6, "refused: FAILED_PRECONDITION: connection refused"),
])
def test_coordinator_failures_map_to_their_exit_status(code: str, status: int, words: str) -> None:
    import grpc

    from peer.cli import coordinator_failure
    from peer.coordinator_client import CoordinatorError

    failure = coordinator_failure(CoordinatorError(getattr(grpc.StatusCode, code), "connection refused"),
                                  "10.0.0.1:7600", retry_for_s=120.0)
    assert failure.status == status and words in str(failure) and "10.0.0.1:7600" in str(failure)

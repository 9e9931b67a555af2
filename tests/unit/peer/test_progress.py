# SPDX-License-Identifier: AGPL-3.0-or-later
"""The progress bar: shown only on a terminal, with tokens/s, loss, outer step, round time and bytes."""

from __future__ import annotations

import io

from peer.progress import ProgressBar, human_bytes


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**2, 3 * 1024**4, 2048 * 1024**4)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB", "2048.0 TiB"]


def test_no_bar_when_stderr_is_not_a_terminal_but_figures_are_kept() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream=stream)
    assert not bar.enabled
    bar.start_period(outer_step=4, inner_steps=3)
    bar.inner_step(loss=2.34567, tokens_per_s=12345.6)
    bar.round_done(seconds=1.25, bytes_exchanged=3 * 1024**2, group_size=3)
    bar.close()
    assert stream.getvalue() == ""
    assert bar.postfix() == "outer=4, loss=2.346, tok/s=12,346, round=1.2s×3, net=3.0 MiB"


def test_bar_on_a_terminal_shows_steps_and_figures() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream=stream)
    assert bar.enabled
    bar.start_period(outer_step=2, inner_steps=4)
    for _ in range(4):
        bar.inner_step(loss=1.5, tokens_per_s=900.0)
    bar.round_done(seconds=0.5, bytes_exchanged=2048, group_size=2)
    bar.round_done(seconds=0.5, bytes_exchanged=2048, group_size=2)
    text = stream.getvalue()
    bar.close()
    assert "outer step 2" in text and "4/4" in text
    assert "loss=1.500" in text and "tok/s=900" in text and "net=4.0 KiB" in text
    assert ProgressBar(stream=FakeTerminal(), enabled=False).enabled is False

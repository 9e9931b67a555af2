# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's progress bar on stderr: inner steps of the current outer step, with the figures a volunteer
wants to see (tokens/s, loss, outer step, last round's duration, bytes exchanged).

It is shown only when stderr is a terminal (a log file or a container log gets the log lines alone) and
can be forced off with ``lila-peer join --no-progress``. Log lines written while the bar is shown go
through ``tqdm.write`` (see :meth:`ProgressBar.redirect_logging`), so they never tear the bar.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

KIB = 1024.0
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(count)
    for unit in BYTE_UNITS:
        if abs(value) < KIB or unit == BYTE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= KIB
    raise AssertionError("unreachable")


class ProgressBar:
    """One bar per outer step (``total`` = inner steps). ``enabled=None`` means: only on a terminal."""

    def __init__(self, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self._bar: tqdm | None = None
        self.figures: dict[str, str] = {}
        self.bytes_total = 0

    def start_period(self, *, outer_step: int, inner_steps: int) -> None:
        """A new inner period towards outer step ``outer_step``."""
        self.close()
        self.figures["outer"] = str(outer_step)
        if self.enabled:
            self._bar = tqdm(total=inner_steps, desc=f"outer step {outer_step}", unit="step",
                             file=self.stream, leave=False, dynamic_ncols=True)
            self._bar.set_postfix(self.figures, refresh=False)

    def inner_step(self, *, loss: float, tokens_per_s: float) -> None:
        self.figures["loss"] = f"{loss:.3f}"
        self.figures["tok/s"] = f"{tokens_per_s:,.0f}"
        if self._bar is not None:
            self._bar.set_postfix(self.figures, refresh=False)
            self._bar.update(1)

    def round_done(self, *, seconds: float, bytes_exchanged: int, group_size: int) -> None:
        self.bytes_total += bytes_exchanged
        self.figures["round"] = f"{seconds:.1f}s×{group_size}"
        self.figures["net"] = human_bytes(self.bytes_total)
        if self._bar is not None:
            self._bar.set_postfix(self.figures)

    def postfix(self) -> str:
        """The figures as the bar shows them (also for tests and the non-terminal case)."""
        return ", ".join(f"{key}={value}" for key, value in self.figures.items())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextlib.contextmanager
    def redirect_logging(self) -> Iterator[None]:
        """While the bar is shown, route console log lines through ``tqdm.write``."""
        if not self.enabled:
            yield
            return
        with logging_redirect_tqdm():
            yield

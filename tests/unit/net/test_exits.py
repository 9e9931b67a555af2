# SPDX-License-Identifier: AGPL-3.0-or-later
"""lila_net.exits: an expected failure is one line and its status; a bug keeps its traceback."""

from __future__ import annotations

import errno
import io

import pytest

from lila_net.exits import CommandError, ExitStatus, describe_os_error, run_command


def _fail(exc: BaseException):
    def body() -> int:
        raise exc
    return body


def test_expected_failures_are_one_line_with_their_status() -> None:
    err = io.StringIO()
    assert run_command("cmd", _fail(CommandError("bad thing: fix it", ExitStatus.REFUSED)), verbose=False,
                       stderr=err) == 6
    assert err.getvalue() == "cmd: error: bad thing: fix it\n"
    err = io.StringIO()
    assert run_command("cmd", _fail(ValueError("bad value")), verbose=False, stderr=err,
                       expected={ValueError: ExitStatus.BAD_INPUT}) == 2
    assert err.getvalue() == "cmd: error: bad value\n"
    err = io.StringIO()
    assert run_command("cmd", _fail(KeyboardInterrupt()), verbose=False, stderr=err) == 130
    assert err.getvalue() == "cmd: interrupted\n"


def test_verbose_prints_the_traceback_above_the_line() -> None:
    err = io.StringIO()
    assert run_command("cmd", _fail(CommandError("nope")), verbose=True, stderr=err) == 2
    text = err.getvalue()
    assert text.startswith("Traceback (most recent call last)") and text.endswith("cmd: error: nope\n")


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_command("cmd", lambda: 1 // 0, verbose=False, stderr=io.StringIO(),
                    expected={ValueError: ExitStatus.BAD_INPUT})


def test_os_errors_by_errno() -> None:
    full = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/ckpt"))
    assert full.status is ExitStatus.SYSTEM and str(full).startswith("no space left on the device (/data/ckpt)")
    missing = describe_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "run.toml"))
    assert missing.status is ExitStatus.BAD_INPUT and "run.toml" in str(missing)
    own = describe_os_error(OSError(errno.EADDRINUSE, "cannot listen on :7600: choose another --grpc"))
    assert str(own) == "cannot listen on :7600: choose another --grpc"  # the raiser's words, no second hint
    plain = describe_os_error(OSError(errno.EADDRINUSE, "Address already in use"))
    assert "choose another port" in str(plain) and plain.status is ExitStatus.SYSTEM


def test_readme_lists_every_exit_status() -> None:
    import re

    from tests.helpers.paths import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Exit statuses"):]
    section = section[:section.index("\n## ")]
    assert {int(n) for n in re.findall(r"^\| (\d+) \|", section, flags=re.M)} == {int(s) for s in ExitStatus}

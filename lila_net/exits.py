# SPDX-License-Identifier: AGPL-3.0-or-later
"""How ``lila``, ``lila-peer`` and ``lila-coordinator`` end: one exit status table, one way to fail.

Every expected failure (a refused join token, a ban, an unreachable coordinator, a bad address, a bad or
missing config or file, a full disk) ends a command with **one line on stderr** that names the problem
and the fix, ``PROG: error: MESSAGE``, and the :class:`ExitStatus` of its kind; the Python traceback
is printed above that line only with ``-v``/``--verbose``. Anything else is a bug and keeps its
traceback. README.md ("Exit statuses") lists the statuses for users.

A command's ``main`` runs its body through :func:`run_command`, which turns :class:`CommandError` (raised
with a message and a status where the failure is understood), the error classes the command names as
expected (ConfigError, DataError, ...: their messages already say what to do) and :class:`OSError` (by
its errno) into that line.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import TextIO


class ExitStatus(IntEnum):
    """The exit statuses of the three commands; a status keeps its meaning across all of them."""

    OK = 0  # done (for `lila-peer join`: the run ended, or the peer left cleanly when asked to stop)
    NO = 1  # the command ran and its answer is no (`lila-peer plan`: does not fit; `lila up`: a peer failed)
    BAD_INPUT = 2  # bad arguments, bad or missing config or file, bad address (argparse's own status too)
    DOES_NOT_FIT = 3  # `lila-peer join`: the run's model does not fit this device (see `lila-peer plan`)
    TRANSPORT_DIED = 4  # `lila-peer join`: the peer's DHT or p2p daemon died (restart: it resumes)
    BANNED = 5  # `lila-peer join`: the coordinator banned this peer (contributions rejected too often)
    REFUSED = 6  # `lila-peer join`: the coordinator refused the join token or the request
    UNREACHABLE = 7  # `lila-peer join`: the coordinator did not answer for the whole retry time
    SYSTEM = 8  # the operating system refused: no space left, permission denied, address in use
    INTERRUPTED = 130  # Ctrl+C where no clean stop applies, or a second Ctrl+C/SIGTERM (quit at once)


class CommandError(Exception):
    """An expected failure of a command: ``message`` names the problem and the fix, ``status`` its kind."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.BAD_INPUT) -> None:
        super().__init__(message)
        self.status = status


def describe_os_error(exc: OSError) -> CommandError:
    """An :class:`OSError` as a command's failure: a missing file is bad input, the rest the system's."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CommandError(f"no space left on the device{where}: free some space, or point the command "
                            "at another disk", ExitStatus.SYSTEM)
    if isinstance(exc, FileNotFoundError):
        return CommandError(f"{exc.strerror or exc}{where}: check the path", ExitStatus.BAD_INPUT)
    if isinstance(exc, PermissionError):
        return CommandError(f"permission denied{where}: run as a user who may write there, or choose "
                            "another path", ExitStatus.SYSTEM)
    if exc.errno is not None and exc.strerror and exc.strerror != os.strerror(exc.errno):
        return CommandError(f"{exc.strerror}{where}", ExitStatus.SYSTEM)  # the raiser's own words name the fix
    if exc.errno == errno.EADDRINUSE:
        return CommandError(f"{exc.strerror or exc}{where}: another process holds that port; stop it or "
                            "choose another port (0 picks a free one)", ExitStatus.SYSTEM)
    return CommandError(f"{exc.strerror or exc}{where}", ExitStatus.SYSTEM)


def run_command(prog: str, body: Callable[[], int | None], *, verbose: bool,
                expected: Mapping[type[BaseException], ExitStatus] | None = None,
                stderr: TextIO | None = None) -> int:
    """Run ``body`` and return its exit status; an expected failure prints ``PROG: error: MESSAGE`` (after
    its traceback with ``verbose``) and returns its status. ``expected`` maps error classes whose message
    says what to do (the first class that matches wins) to their statuses; Ctrl+C returns
    :attr:`ExitStatus.INTERRUPTED`."""
    err = stderr or sys.stderr
    try:
        return int(body() or 0)
    except KeyboardInterrupt as exc:
        caught: BaseException = exc
        failure = CommandError("interrupted", ExitStatus.INTERRUPTED)
    except CommandError as exc:
        caught, failure = exc, exc
    except OSError as exc:
        caught, failure = exc, _expected(exc, expected) or describe_os_error(exc)
    except Exception as exc:
        known = _expected(exc, expected)
        if known is None:
            raise
        caught, failure = exc, known
    if verbose:
        traceback.print_exception(type(caught), caught, caught.__traceback__, file=err)
    prefix = "" if failure.status is ExitStatus.INTERRUPTED else "error: "
    err.write(f"{prog}: {prefix}{failure}\n")
    err.flush()
    return int(failure.status)


def _expected(exc: BaseException, expected: Mapping[type[BaseException], ExitStatus] | None) -> CommandError | None:
    for kind, status in (expected or {}).items():
        if isinstance(exc, kind):
            return CommandError(str(exc), status)
    return None

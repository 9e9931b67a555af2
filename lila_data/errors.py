# SPDX-License-Identifier: AGPL-3.0-or-later
"""The one error type of :mod:`lila_data`."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data or a bad data setting.

    The message always names the source (spec, file, row or field) and says what to do about it, so a
    volunteer reading a peer's log can fix the problem without reading the code.
    """

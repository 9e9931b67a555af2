# SPDX-License-Identifier: AGPL-3.0-or-later
"""The codec's single error type."""

from __future__ import annotations


class CodecError(ValueError):
    """A tensor cannot be encoded, or a payload cannot be decoded.

    The message says what is wrong (which field, which value, which limit) and how to
    fix it. Every decoding failure (truncated, oversized, corrupted or forged
    payloads, unknown versions) raises this error and nothing else.
    """


class ExportError(ValueError):
    """A model export file is missing, truncated, corrupt or of an unknown format.

    The message names the file, what is wrong and what to do (re-export, or upgrade).
    """

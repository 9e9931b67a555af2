# SPDX-License-Identifier: AGPL-3.0-or-later
"""``HOST:PORT`` addresses as users type them (``[v6]:PORT`` for IPv6), checked before anything dials or binds."""

from __future__ import annotations


def parse_host_port(text: str, *, what: str, example: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` of ``text``; raises ``ValueError`` naming ``what`` (e.g. ``--grpc``) and showing
    ``example`` when it has no host, no port, or a port outside 1–65535 (0 too with ``allow_port_zero``)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r}: use HOST:PORT, e.g. {example}")
    return host, int(port)

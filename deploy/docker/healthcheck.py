#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Container health check: exit 0 when an HTTP GET of the URL answers 200, else 1 (standard library only).

    python3 healthcheck.py http://127.0.0.1:8080/api/status
    LILA_HEALTH_URL=http://127.0.0.1:9400/metrics python3 healthcheck.py

The URL is the first argument, else ``$LILA_HEALTH_URL``. A wildcard listen address in it (``0.0.0.0``
or ``[::]``) is replaced by the loopback address, so the same value can serve as a listen address and a
check target. ``--timeout`` (seconds, default 5) bounds the request: keep it below the HEALTHCHECK
``--timeout`` of the image, or Docker kills the check before it can report why it failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 5.0
HTTP_OK = 200
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}


def check_url(url: str) -> str:
    """``url`` with a wildcard host replaced by loopback; raises ValueError for a non-HTTP URL."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"health check URL {url!r}: use http://HOST:PORT/PATH")
    scheme, rest = url.split("://", 1)
    host_port, sep, path = rest.partition("/")
    for wildcard, loopback in WILDCARD_HOSTS.items():
        if host_port == wildcard or host_port.startswith(wildcard + ":"):
            host_port = loopback + host_port[len(wildcard):]
    return f"{scheme}://{host_port}{sep}{path}"


def probe(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, reason) of one GET of ``url``."""
    try:
        with urllib.request.urlopen(check_url(url), timeout=timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    return status == HTTP_OK, f"{url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="exit 0 if the URL answers HTTP 200")
    parser.add_argument("url", nargs="?", default=os.environ.get("LILA_HEALTH_URL", ""))
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    args = parser.parse_args(argv)
    if not args.url:
        print("healthcheck: no URL: pass one or set LILA_HEALTH_URL", file=sys.stderr)
        return 1
    healthy, reason = probe(args.url, timeout_s=args.timeout)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Keep Prometheus's file-based service discovery in step with the peers a coordinator knows.

The coordinator serves ``/api/prometheus-targets``: the metrics endpoints live peers declared at Join,
as Prometheus ``file_sd`` JSON. This loop fetches that list and writes it atomically into the
``file_sd_configs`` directory of deploy/prometheus/prometheus.yml, which Prometheus watches.

    python3 fetch_targets.py --coordinator http://127.0.0.1:8080 --out deploy/prometheus/targets/peers.json
    python3 fetch_targets.py --coordinator http://coordinator:8080 --out /targets/peers.json --interval 15

Standard library only (it runs in the coordinator image, or anywhere with Python 3.10+).
``--interval``: seconds between fetches; about the Prometheus scrape interval is right: much shorter only
adds load, much longer leaves new peers unscraped (and departed ones scraped) for that long.
A failed fetch keeps the last good file, so a coordinator restart does not make every peer vanish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

logger = logging.getLogger("fetch_targets")

TARGETS_PATH = "/api/prometheus-targets"
DEFAULT_INTERVAL_S = 15.0
DEFAULT_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 16 * 1024 * 1024


class TargetsError(ValueError):
    """The coordinator's answer is not a Prometheus file_sd target list."""


def validate_targets(data: Any) -> list[dict[str, Any]]:
    """``data`` if it is a list of ``{"targets": [str, ...], "labels": {str: str}}`` groups, else TargetsError."""
    if not isinstance(data, list):
        raise TargetsError(f"expected a JSON list of target groups, got {type(data).__name__}")
    for i, group in enumerate(data):
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            raise TargetsError(f"target group {i}: expected an object with a 'targets' list")
        if not all(isinstance(t, str) and t for t in group["targets"]):
            raise TargetsError(f"target group {i}: every target must be a non-empty 'host:port' string")
        labels = group.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise TargetsError(f"target group {i}: 'labels' must map strings to strings")
    return data


def fetch_targets(base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """The coordinator's current target groups (raises OSError/URLError or TargetsError)."""
    url = base_url.rstrip("/") + TARGETS_PATH
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body = response.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise TargetsError(f"{url}: answer larger than {MAX_BODY_BYTES} bytes")
    try:
        return validate_targets(json.loads(body))
    except json.JSONDecodeError as exc:
        raise TargetsError(f"{url}: not JSON ({exc})") from None


def write_targets(path: Path, groups: list[dict[str, Any]]) -> None:
    """Write ``groups`` to ``path`` atomically (Prometheus never reads a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(groups, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sync_once(base_url: str, out: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """One fetch and write; returns the number of targets written. Errors propagate."""
    groups = fetch_targets(base_url, timeout_s=timeout_s)
    write_targets(out, groups)
    return sum(len(g["targets"]) for g in groups)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (also used by the tests to check the systemd unit and compose command)."""
    parser = argparse.ArgumentParser(description="write a coordinator's peer metrics targets for Prometheus")
    parser.add_argument("--coordinator", required=True, help="the coordinator's HTTP base URL, e.g. http://coordinator:8080")
    parser.add_argument("--out", required=True, type=Path, help="file_sd JSON file to write (e.g. targets/peers.json)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between fetches")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    parser.add_argument("--once", action="store_true", help="fetch once and exit (1 on failure)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.interval <= 0 or args.timeout <= 0:
        parser.error("--interval and --timeout must be > 0 seconds")
    if not args.coordinator.startswith(("http://", "https://")):
        parser.error(f"--coordinator {args.coordinator!r}: use the HTTP base URL, e.g. http://127.0.0.1:8080")
    stop = threading.Event()
    if not args.once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    last_count: int | None = None
    while True:
        try:
            count = sync_once(args.coordinator, args.out, timeout_s=args.timeout)
        except (OSError, TargetsError) as exc:  # URLError is an OSError
            logger.warning("could not update %s from %s: %s (keeping the last file)", args.out, args.coordinator, exc)
            if args.once:
                return 1
        else:
            if count != last_count:
                logger.info("%s: %d peer metrics target(s)", args.out, count)
                last_count = count
            if args.once:
                return 0
        if stop.wait(args.interval):
            return 0


if __name__ == "__main__":
    sys.exit(main())

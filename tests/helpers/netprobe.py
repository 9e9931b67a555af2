# SPDX-License-Identifier: AGPL-3.0-or-later
"""A tiny TCP tool the testbed tests run inside namespaces (stdlib only; every step has a deadline).

    python netprobe.py serve --port P [--send N] [--timeout T]
        listen on 0.0.0.0:P, print "ready", accept one connection; print one JSON line
        {"peer": ip, "received": bytes, "seconds": first byte to EOF}; with --send N, send N bytes to
        the client instead and report {"peer": ip, "sent": N}.
    python netprobe.py send --host H --port P --bytes N [--timeout T]
        connect and send N bytes (then half-close and wait for the server to close).
    python netprobe.py recv --host H --port P [--timeout T]
        connect and read until EOF; print {"received": bytes, "seconds": first byte to EOF}.
    python netprobe.py connect --host H --port P [--timeout T]
        exit 0 when a connection is established, else print the error and exit 1.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

CHUNK = 64 * 1024


def _drain(conn: socket.socket) -> tuple[int, float]:
    received, first = 0, None
    while data := conn.recv(CHUNK):
        if first is None:
            first = time.monotonic()
        received += len(data)
    return received, (time.monotonic() - first) if first is not None else 0.0


def _send(conn: socket.socket, count: int) -> None:
    block = b"\0" * CHUNK
    while count > 0:
        conn.sendall(block[: min(count, CHUNK)])
        count -= CHUNK


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "send", "recv", "connect"])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--send", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    if args.mode == "serve":
        with socket.create_server(("0.0.0.0", args.port)) as server:
            server.settimeout(args.timeout)
            print("ready", flush=True)
            conn, (peer, _) = server.accept()
            with conn:
                conn.settimeout(args.timeout)
                if args.send:
                    _send(conn, args.send)
                    result = {"peer": peer, "sent": args.send}
                else:
                    received, seconds = _drain(conn)
                    result = {"peer": peer, "received": received, "seconds": seconds}
        print(json.dumps(result), flush=True)
        return 0
    try:
        conn = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as exc:
        print(f"connect failed: {exc!r}", flush=True)
        return 1
    with conn:
        if args.mode == "send":
            _send(conn, args.bytes)
            conn.shutdown(socket.SHUT_WR)
            _drain(conn)
        elif args.mode == "recv":
            received, seconds = _drain(conn)
            print(json.dumps({"received": received, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

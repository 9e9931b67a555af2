# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila-coordinator``: run a coordinator and manage its join tokens.

    lila-coordinator serve --config runs/cpu-demo.toml --db run.db --grpc 0.0.0.0:7600 --http 0.0.0.0:8080
    lila-coordinator token create --db run.db --label "alice's GPU box"
    lila-coordinator token list --db run.db
    lila-coordinator token revoke --db run.db TOKEN_ID

Port 0 picks a free port; the chosen addresses are printed and, with ``--ready-file``, written as
JSON (``run``, ``grpc``, ``http``, ``dht_maddrs``, ``dht_start_s``, ``dht_import_s``, ``pid``) once the coordinator serves.
SIGINT or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from lila_net.address import parse_host_port as split_host_port
from lila_net.exits import CommandError, ExitStatus, run_command

logger = logging.getLogger("coordinator")

HOURS_TO_S = 3600.0
DEFAULT_GRPC_PORT = 7600  # peers join HOST:7600 (README, docs/deploy.md, deploy/ use the same port)
DEFAULT_HTTP_PORT = 8080  # status page, /api/status, /metrics


def parse_host_port(text: str, *, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; raises ``ValueError`` with a clear message."""
    return split_host_port(text, what=flag, example="127.0.0.1:0 (port 0 picks a free port)", allow_port_zero=True)


def _write_ready(path: Path, info: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


async def _serve(args: argparse.Namespace) -> int:
    from coordinator.app import CoordinatorApp, DhtOptions
    from coordinator.planning import plan_from_config
    from coordinator.settings import ServerSettings
    from coordinator.status import RunInfo
    from lila_net.config import load_run_config
    from lila_net.tls import server_tls

    grpc_host, grpc_port = parse_host_port(args.grpc, flag="--grpc")
    http_host, http_port = parse_host_port(args.http, flag="--http")
    tls = server_tls(args.tls_cert, args.tls_key)
    config = load_run_config(args.config)
    settings = ServerSettings.from_run_config(config).with_overrides(
        join_rate_limit_per_s=args.join_rate_limit,
        join_rate_limit_burst=args.join_rate_burst,
        dht_auth=False if args.no_dht_auth else None,
    )
    plan = plan_from_config(config)
    app = CoordinatorApp(
        plan=plan,
        run=RunInfo(config.run.name, config.model.preset, config.model.variant),
        run_config_toml=config.to_toml(),
        settings=settings,
        db_path=args.db,
        dht=DhtOptions(
            enabled=not args.no_dht,
            host=args.dht_host,
            port=args.dht_port,
            announce=args.announce,
            identity_path=args.dht_identity,
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        addresses = await app.start(
            grpc_host=grpc_host, grpc_port=grpc_port, http_host=http_host, http_port=http_port, tls=tls
        )
    except BaseException:
        await app.stop()
        raise
    info = {
        "run": config.run.name,
        "grpc": addresses.grpc,
        "http": addresses.http,
        "dht_maddrs": addresses.dht_maddrs,
        "dht_start_s": addresses.dht_start_s,
        "dht_import_s": addresses.dht_import_s,
        "pid": os.getpid(),
    }
    print(
        f"run {config.run.name}: {sum(len(s.shards) for s in plan.stages)} shards in {len(plan.stages)} stages",
        flush=True,
    )
    print(f"gRPC   {addresses.grpc}", flush=True)
    print(f"status http://{addresses.http}/", flush=True)
    for maddr in addresses.dht_maddrs:
        print(f"DHT    {maddr}", flush=True)
    # Everything allocated so far (modules, the plan, the loaded state) lives until exit: move it out
    # of the collector's view, so full collections stay short (they stall every RPC while they run).
    gc.collect()
    gc.freeze()
    if args.ready_file:
        _write_ready(Path(args.ready_file), info)
    await stop.wait()
    print("stopping", flush=True)
    await app.stop()
    return 0


def _token(args: argparse.Namespace) -> int:
    from coordinator.auth import create_join_token
    from coordinator.storage import Storage

    storage = Storage(args.db)
    try:
        if args.token_command == "create":
            ttl = None if args.ttl_hours is None else args.ttl_hours * HOURS_TO_S
            token_id, token = create_join_token(storage, label=args.label, now=time.time(), ttl_s=ttl)
            print(token)
            print(f"join token {token_id} created; it is shown only once, store it now", file=sys.stderr)
        elif args.token_command == "revoke":
            if not storage.revoke_join_token(args.token_id, at=time.time()):
                raise CommandError(f"no active join token with id {args.token_id!r}; see `lila-coordinator token list`",
                                   ExitStatus.NO)
            print(f"join token {args.token_id} revoked; its sessions end within seconds")
        else:
            for row in storage.join_tokens():
                state = (
                    "revoked"
                    if row.revoked_at
                    else "expired"
                    if row.expires_at and row.expires_at <= time.time()
                    else "active"
                )
                print(f"{row.token_id}  {state:8}  {row.label}")
    finally:
        storage.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lila-coordinator``."""
    parser = argparse.ArgumentParser(prog="lila-coordinator", description="LILA Network coordinator")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback above an error's one-line message")
    parser.add_argument("--log-level", help="logging level (DEBUG, INFO, WARNING; default INFO, DEBUG with -v)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the coordinator")
    serve.add_argument("--config", required=True, help="run config TOML (see runs/)")
    serve.add_argument("--db", required=True, help="SQLite database of the run (created if missing)")
    serve.add_argument(
        "--grpc", default=f"127.0.0.1:{DEFAULT_GRPC_PORT}", help="HOST:PORT for peers (port 0: any free port)"
    )
    serve.add_argument(
        "--http", default=f"127.0.0.1:{DEFAULT_HTTP_PORT}", help="HOST:PORT of the status page (port 0: any free port)"
    )
    serve.add_argument("--ready-file", help="write the chosen addresses here as JSON once serving")
    serve.add_argument("--no-dht", action="store_true", help="do not run the hivemind DHT bootstrap node")
    serve.add_argument("--dht-host", help="IPv4 address for the DHT node (default: the --grpc host)")
    serve.add_argument("--dht-port", type=int, default=0, help="TCP port for the DHT node (0: any free port)")
    serve.add_argument(
        "--announce",
        metavar="HOST",
        help="public address or name peers dial to reach this coordinator's DHT node and relay (behind a NAT, "
        "in a container, or listening on 0.0.0.0); default: the addresses the node sees on its interfaces",
    )
    serve.add_argument(
        "--dht-identity", help="file keeping the DHT node's key, so its peer id survives restarts"
    )
    serve.add_argument(
        "--no-dht-auth",
        action="store_true",
        help="let any peer use the DHT node (only for peers too old to present averaging credentials)",
    )
    serve.add_argument("--tls-cert", metavar="PEM",
                       help="serve gRPC over TLS with this certificate chain (peers then join with --tls or --tls-ca)")
    serve.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument("--join-rate-limit", type=float, help="Join calls per second per client address")
    serve.add_argument("--join-rate-burst", type=int, help="Join calls at once per client address")
    token = sub.add_parser("token", help="manage join tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a join token (printed once)")
    create.add_argument("--db", required=True)
    create.add_argument("--label", default="", help="who the token is for (shown in `token list`)")
    create.add_argument(
        "--ttl-hours", type=float, help="expire the token after this many hours (default: never)"
    )
    revoke = token_sub.add_parser("revoke", help="revoke a join token and its sessions")
    revoke.add_argument("--db", required=True)
    revoke.add_argument("token_id")
    listing = token_sub.add_parser("list", help="list join tokens (ids and labels, never the tokens)")
    listing.add_argument("--db", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lila-coordinator``; an expected failure (bad config or address, a port in use, a full
    disk) ends with one line on stderr and its :class:`~lila_net.exits.ExitStatus`, a traceback only with
    ``-v``."""
    args = build_parser().parse_args(argv)
    level = "DEBUG" if args.verbose and args.log_level is None else (args.log_level or "INFO")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        if args.command == "serve":
            return asyncio.run(_serve(args))
        return _token(args)

    # ConfigError, DataError, TlsError and bad addresses are ValueErrors, StorageError a RuntimeError:
    # their messages say what to fix
    return run_command("lila-coordinator", body, verbose=args.verbose,
                       expected={ValueError: ExitStatus.BAD_INPUT, RuntimeError: ExitStatus.BAD_INPUT})


if __name__ == "__main__":
    sys.exit(main())

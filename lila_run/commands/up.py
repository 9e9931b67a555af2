# SPDX-License-Identifier: AGPL-3.0-or-later
"""``lila up``: a local LILA network (coordinator + N peers) on the bundled data, until Ctrl+C, K outer steps
or the end of the run's data; it ends with a summary (:mod:`lila_run.summary`): tokens, val bpb at every
evaluation, bytes sent against fp32, a ``lila generate`` sample, the checkpoint and a saved status page."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lila_net.exits import CommandError, ExitStatus
from lila_run.local_network import LocalNetwork, NetworkOptions
from lila_run.summary import RunSummary, evaluations, format_summary, traffic

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "runs" / "cpu-demo.toml"
STATUS_EVERY_S = 5.0
STATUS_PAGE = "status.html"  # the saved copy of the final status page, in the workdir
SAMPLE_PROMPT = "The"
SAMPLE_TOKENS = 24
SAMPLE_TIMEOUT_S = 120.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="run a local network: a coordinator and N peers on this machine")
    p.add_argument("--peers", type=int, default=2, help="number of peer processes (default 2)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config (default: the CPU demo)")
    p.add_argument("--preset", help="override the run config's model preset (e.g. debug)")
    p.add_argument("--data", help="override the data source spec (e.g. parquet:/path/to/dir)")
    p.add_argument("--max-outer-steps", type=int, help="stop each peer once it holds outer step N")
    p.add_argument("--workdir", type=Path, default=Path("workdir"), help="logs, database, checkpoints")
    p.add_argument("--no-dht", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--testbed", action="store_true",
                   help="run every process on its own host of a namespaced internet (root only; see lila_run.testbed)")
    p.add_argument("--nat-peers", type=int, default=0, help="with --testbed: how many peers sit behind a home NAT")
    p.add_argument("--uplink", help="with --testbed: each peer's uplink, a tc rate such as 20mbit (default unshaped)")
    p.add_argument("--downlink", help="with --testbed: each peer's downlink, e.g. 100mbit (default unshaped)")
    p.set_defaults(func=run)


def _effective_config(args: argparse.Namespace) -> Path:
    """The run config, with --preset/--data applied, written into the workdir."""
    from dataclasses import replace

    from lila_net.config import load_run_config

    config = load_run_config(args.config)
    if args.preset:
        config = replace(config, model=replace(config.model, preset=args.preset))
    if args.data:
        config = replace(config, data=replace(config.data, sources={name: args.data for name in config.data.sources}))
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / "run.toml"
    path.write_text(config.to_toml())
    return path


def run(args: argparse.Namespace) -> int:
    if args.peers < 1:
        raise CommandError("--peers must be at least 1")
    if not 0 <= args.nat_peers <= args.peers:
        raise CommandError(f"--nat-peers {args.nat_peers} must be between 0 and --peers ({args.peers})")
    if not args.testbed and (args.nat_peers or args.uplink or args.downlink):
        raise CommandError("--nat-peers, --uplink and --downlink need --testbed")
    config = _effective_config(args)
    options = NetworkOptions(config=config, workdir=args.workdir, peers=args.peers,
                             max_outer_steps=args.max_outer_steps, dht=not args.no_dht)
    if not args.testbed:
        return _run(args, LocalNetwork(options))
    from lila_run.internet import HOME, PUBLIC, InternetNetwork, Links
    from lila_run.testbed import Testbed, available

    reason = available()
    if reason is not None:
        raise CommandError(f"--testbed: network namespaces cannot be made here: {reason}")
    with Testbed() as bed:
        network = InternetNetwork(options, bed=bed)
        kinds = [HOME] * args.nat_peers + [PUBLIC] * (args.peers - args.nat_peers)
        links = Links(uplink=args.uplink, downlink=args.downlink)
        return _run(args, network, start_peer=lambda i: network.start_peer(i, kind=kinds[i], links=links))


def _run(args: argparse.Namespace, network: LocalNetwork, start_peer=None) -> int:
    start_peer = start_peer or network.start_peer
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        ready = network.start_coordinator()
        print(f"coordinator  gRPC {ready['grpc']}")
        print(f"status page  http://{ready['http']}/")
        print(f"metrics      http://{ready['http']}/metrics")
        host = getattr(network, "coordinator_host", None)
        if host is not None:  # --testbed: the coordinator lives in its own namespace
            print(f"testbed      coordinator host {host.address} (namespace {host.netns}): "
                  f"ip netns exec {host.netns} curl -s http://127.0.0.1:{ready['http'].rsplit(':', 1)[1]}/api/status")
        for index in range(args.peers):
            start_peer(index)
        print(f"{args.peers} peers started; logs in {args.workdir}/ (Ctrl+C stops everything)")
        while not stop.wait(STATUS_EVERY_S):
            status = network.status()
            if status is not None:
                print(_status_line(status), flush=True)
            if network.peers_running() == 0:
                break
        codes = [p.poll() for p in network.peers]
        final = network.status()
        page = network.save_status_page(args.workdir / STATUS_PAGE)
    finally:
        signal.signal(signal.SIGINT, previous)
        network.stop()
    checkpoint = network.collect_checkpoint()
    peer_dirs = [network.peer_workdir(i) for i in range(len(network.peers))]
    summary = RunSummary(tokens=None if final is None else int(final["global_tokens"]),
                         evaluations=evaluations(peer_dirs), traffic=traffic(peer_dirs), checkpoint=checkpoint,
                         status_page=page, sample=None if checkpoint is None else _sample(checkpoint))
    print("\n".join(format_summary(summary)), flush=True)
    failed = [i for i, code in enumerate(codes) if code not in (0, None)]
    if failed and not stop.is_set():
        print(f"peers {failed} exited with an error; see {args.workdir}/peer-N.log")
        return ExitStatus.NO
    return 0


def _sample(checkpoint: Path) -> str | None:
    """A short seeded continuation by ``lila generate`` (None, with a warning, when it fails)."""
    command = [sys.executable, "-m", "lila_run.cli", "generate", "--checkpoint", str(checkpoint),
               "--prompt", SAMPLE_PROMPT, "--max-new-tokens", str(SAMPLE_TOKENS), "--seed", "0"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning("lila generate took longer than %.0f s; no sample", SAMPLE_TIMEOUT_S)
        return None
    if done.returncode != 0:
        logger.warning("lila generate failed (exit %d): %s", done.returncode, done.stderr.strip()[-300:])
        return None
    return done.stdout.strip()


def _status_line(status: dict) -> str:
    peers = status.get("peers_by_state") or {}
    active = peers.get("active", peers.get("ACTIVE", 0)) if isinstance(peers, dict) else 0
    parts = [f"outer step {status.get('outer_step', '?')}", f"tokens {status.get('global_tokens', '?')}",
             f"peers {active}"]
    if status.get("loss") is not None:
        parts.append(f"loss {status['loss']:.4f}")
    if status.get("val_bpb") is not None:
        parts.append(f"val bpb {status['val_bpb']:.4f}")
    return " | ".join(parts)

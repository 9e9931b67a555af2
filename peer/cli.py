# SPDX-License-Identifier: AGPL-3.0-or-later
"""The ``lila-peer`` command: what a volunteer runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from lila_model.config import PRESETS
from lila_net.config import ConfigError, DilocoSection, ModelSection
from lila_net.exits import CommandError, ExitStatus, run_command

from .hardware import DEVICE_CHOICES, HardwareError, detect_hardware
from .logs import LOG_FORMATS, PeerContext, configure_logging
from .options import PeerOptions
from .plan import GIB, make_plan


def _add_plan(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="say whether and how a model preset fits this machine (or a GPU of --memory-gb)"
    )
    p.add_argument("--preset", choices=PRESETS,
                   help=f"model preset (default: the run config's, else {ModelSection.preset})")
    p.add_argument("--config", help="a run config TOML: takes preset, variant, batch and sequence length from it")
    p.add_argument("--memory-gb", type=float, help="plan for a CUDA GPU with this much memory (GiB) instead of this machine")
    p.add_argument("--device", choices=DEVICE_CHOICES, default=PeerOptions.device)
    p.add_argument("--batch-size", type=int,
                   help=f"sequences per inner step (default: run config's, else {DilocoSection.batch_size})")
    p.add_argument("--seq-len", type=int, help="sequence length (default: the run's longest stage, else the preset's context)")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from lila_model.config import get_preset

    preset, variant, batch, seq_len = args.preset, ModelSection.variant, args.batch_size, args.seq_len
    largest = None
    if args.config:
        from lila_net.config import load_run_config, model_stages

        run = load_run_config(args.config)
        stages = model_stages(run)
        if preset is None and len(stages) > 1:  # a staged run must fit its last (largest) model shape
            largest = stages[-1].config
        preset = preset or run.model.preset
        variant = run.model.variant
        batch = batch or run.diloco.batch_size
        seq_len = seq_len or run.curriculum.max_seq_len
    preset = preset or ModelSection.preset
    batch = batch or DilocoSection.batch_size
    seq_len = seq_len or get_preset(preset).block_size
    hardware = detect_hardware(args.device)  # HardwareError: main's one line, exit 2
    if args.memory_gb is not None:
        hardware = replace(hardware, device="cuda", name=f"a {args.memory_gb:g} GiB GPU",
                           memory_bytes=int(args.memory_gb * GIB), bf16=True, fp16=True)
    plan = make_plan(preset, hardware, batch_size=batch, seq_len=seq_len, variant=variant, config=largest)
    print(f"{hardware.name}: batch {batch} × {seq_len} tokens, variant {variant}")
    print(plan.render())
    return ExitStatus.OK if plan.fits else ExitStatus.NO


def _add_join(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "join", help="join a run and train until it ends (Ctrl+C leaves cleanly)",
        epilog="exit status: 0 the run ended or the peer left cleanly (Ctrl+C or SIGTERM, also while the "
               "coordinator was unreachable); 2 bad arguments or address; 3 the model does not fit this device (see "
               "`lila-peer plan`); 4 this peer's DHT/p2p daemon died (restart: it resumes from its checkpoint); 5 the "
               "coordinator banned this peer (its contributions were rejected too often); 6 the coordinator refused "
               "the join token; 7 the coordinator did not answer; 8 the system refused (disk full, port in use); "
               "130 a second Ctrl+C quit at once")
    p.add_argument("coordinator", help="the coordinator's gRPC address, HOST:PORT")
    p.add_argument("--token", default=os.environ.get("LILA_JOIN_TOKEN", ""),
                   help="join token from the run's organizer (or set LILA_JOIN_TOKEN)")
    p.add_argument("--name", default=PeerOptions.name, help="name shown on the status page (default: host name)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default=PeerOptions.device)
    p.add_argument("--metrics-port", type=int, default=PeerOptions.metrics_port,
                   help="Prometheus /metrics port (0 picks a free one)")
    p.add_argument("--metrics-host", default=PeerOptions.metrics_host, help="address to serve /metrics on")
    p.add_argument("--host", default=PeerOptions.host,
                   help="address this peer listens on for other peers (default %(default)s: every interface)")
    p.add_argument("--port", type=int, default=PeerOptions.port,
                   help="TCP port this peer listens on for other peers (default: a free port)")
    p.add_argument("--announce", metavar="HOST:PORT",
                   help="public address a router forwards to this peer (the coordinator dials it to check); "
                        "without it the peer announces the address the coordinator sees, if it can dial it back, "
                        "and otherwise reaches the others through relays")
    p.add_argument("--tls", action="store_true",
                   help="dial the coordinator over TLS, checked against the system's certificate authorities")
    p.add_argument("--tls-ca", type=Path, metavar="PEM",
                   help="dial the coordinator over TLS, checked against this CA certificate (a private or "
                        "self-signed one); implies --tls")
    p.add_argument("--client-mode", action="store_true",
                   help="only make outgoing connections (this peer then never owns a part nor relays)")
    p.add_argument("--max-outer-steps", type=int, metavar="N",
                   help="leave once this peer holds outer step N (the network's step, so every peer given the same "
                        "N leaves holding the same parameters)")
    p.add_argument("--workdir", type=Path, default=PeerOptions.workdir, help="checkpoints and logs")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--straggler-wait", type=float, metavar="SECONDS",
                   help="how long to wait at each round for slower peers (default: the run's averaging timeout)")
    p.add_argument("--eval-every", type=int, default=PeerOptions.eval_every, metavar="K",
                   help="evaluate the validation texts every K outer steps; 0 never (default %(default)s)")
    p.add_argument("--keep-checkpoints", type=int, default=PeerOptions.keep_checkpoints, metavar="N",
                   help="checkpoints kept in the workdir, newest first (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.add_argument("--throttle", type=float, default=PeerOptions.throttle, help=argparse.SUPPRESS)  # tests, benches
    p.add_argument("--record-pseudo-gradients", type=int, default=PeerOptions.record_every,
                   help=argparse.SUPPRESS)  # codec benchmarks: peer.recording
    p.set_defaults(func=_run_join)


def _run_join(args: argparse.Namespace) -> int:
    from .coordinator_client import DEFAULT_RETRY_FOR_S, CoordinatorError
    from .node import PeerNode
    from .shutdown import GracefulStop

    options = PeerOptions(coordinator=args.coordinator, token=args.token, name=args.name, device=args.device,
                          workdir=args.workdir, metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                          max_outer_steps=args.max_outer_steps, host=args.host, port=args.port,
                          announce=args.announce, client_mode=args.client_mode, tls=args.tls,
                          tls_ca=args.tls_ca,
                          threads=args.threads, straggler_wait_s=args.straggler_wait,
                          eval_every=args.eval_every, keep_checkpoints=args.keep_checkpoints,
                          progress=False if args.no_progress else None, throttle=args.throttle,
                          record_every=args.record_pseudo_gradients)  # ConfigError: exit 2
    stop = GracefulStop().install()
    node = PeerNode(options, stop=stop.event, log_context=args.log_context)
    try:
        code = node.run()
    except CoordinatorError as exc:
        raise coordinator_failure(exc, options.coordinator, retry_for_s=DEFAULT_RETRY_FOR_S) from exc
    if stop.event.is_set() and node.client.join_response is None:
        print(f"lila-peer join: stopped before the coordinator at {options.coordinator} answered; "
              "nothing was running yet", file=sys.stderr)
    return code


def coordinator_failure(exc: Exception, address: str, *, retry_for_s: float) -> CommandError:
    """A call the coordinator refused or never answered (a :class:`~peer.coordinator_client.CoordinatorError`)
    as the one line ``lila-peer join`` ends with: unreachable (7), or refused, with the coordinator's own
    words on what to do (6)."""
    import grpc

    code, details = getattr(exc, "code", None), getattr(exc, "details", str(exc))
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CommandError(f"the coordinator at {address} did not answer for {retry_for_s:g} s ({details}); "
                            "check the address and port, that the coordinator runs, and that no firewall blocks "
                            "it", ExitStatus.UNREACHABLE)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return CommandError(f"the coordinator at {address} banned this peer: {details}", ExitStatus.BANNED)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return CommandError(f"the coordinator at {address} refused the join token: {details}",
                            ExitStatus.REFUSED)
    name = code.name if code is not None else "refused"
    return CommandError(f"the coordinator at {address} refused: {name}: {details}", ExitStatus.REFUSED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lila-peer", description="Contribute compute to a LILA training run.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback above an error's one-line message")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="text lines, or one JSON object per line for log collectors (both carry the peer id)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_plan(subparsers)
    _add_join(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lila-peer``: an expected failure ends with one line on stderr and its exit status
    (:class:`~lila_net.exits.ExitStatus`), a traceback only with ``-v``."""
    args = build_parser().parse_args(argv)
    args.log_context = PeerContext()
    configure_logging(args.log_context, level=logging.DEBUG if args.verbose else logging.INFO,
                      fmt=args.log_format)
    return run_command(f"lila-peer {args.command}", lambda: args.func(args), verbose=args.verbose,
                       expected={ConfigError: ExitStatus.BAD_INPUT, HardwareError: ExitStatus.BAD_INPUT})


if __name__ == "__main__":
    sys.exit(main())

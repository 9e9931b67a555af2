# SPDX-License-Identifier: AGPL-3.0-or-later
"""Peers of every speed on a limited uplink: blocking fixed-H rounds against time-boxed and overlapped ones.

Four peers on their own hosts of the namespaced internet (:mod:`lila_run.testbed`, every host on a
``tbf``-shaped uplink), at relative speeds 1, 1, 0.5 and 0.25 (``lila-peer join --throttle``: a slower
device is emulated by sleeping after each step, and the sleep counts as step time), side by side in one
run::

    python -m bench.volunteers --quick --out bench/results/volunteers-quick.json

Modes (``configs[].mode``):

- ``fixed``: today's blocking rounds, every peer runs ``inner_steps`` steps, the fast ones then wait;
- ``timeboxed``: ``diloco.period_s``, every peer trains until the period ends, weighted by its tokens;
- ``overlapped``: time-boxed, and each round averages while the next period trains (``diloco.overlap``);
- ``equal``: four peers at speed 1, blocking fixed-H rounds, with about the tokens the overlapped network
  trained (the quality reference at equal tokens).

``fixed`` runs as many steps as the fast peers trained per time-boxed period, so it runs after the
time-boxed modes; ``equal`` runs last (:func:`plan`).

Per configuration, from the peers' diaries: ``peer_utilization`` (each peer's share of its outer cycles
spent in — emulated — optimizer steps, :func:`bench.network.watch.peer_stats`), ``val_bpb`` (peer 0's
evaluation of the validation texts at the last outer step), ``tokens`` (all peers, the outer steps
measured) and the round figures. The uplink is chosen so that a blocking round costs at least 30% of an
inner period (``round_share``). Latency is not emulated (no ``netem`` here); the four peers share this
host's cores, so a throttled peer's sleep frees CPU for the others. Needs root for the namespaces.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.internet import reached, same_hashes, until_step, write_repeated_corpus
from bench.network.watch import peer_stats
from lila_run.harness import small_run, write_run_config
from lila_run.internet import PUBLIC, InternetNetwork, Links
from lila_run.local_network import NetworkOptions
from lila_run.testbed import Testbed, available
from peer.events import EVENTS_FILE, read_events

logger = logging.getLogger("bench.volunteers")

MODES = ("fixed", "timeboxed", "overlapped", "equal")
SPEEDS = (1.0, 1.0, 0.5, 0.25)
BASE_THROTTLE = 0.5  # speed 1 = half this host's speed per peer: four peers share two cores
UPLINK_MBIT = 5
DOWNLINK_MBIT = 100
PRESET = "debug"
CODEC = {"name": "e8", "bits": 4, "block_size": 64}
SEQ_LEN = 64
BATCH = 1
PERIOD_S = 10.0
DEFAULT_INNER_STEPS = 100  # fixed/equal H when no time-boxed run measured one (--modes without it)
CORPUS_COPIES = 8
QUICK_OUTER_STEPS = 5
FULL_OUTER_STEPS = 10
START_S = 150.0
POLL_S = 1.0


@dataclass(frozen=True)
class Config:
    """One measured network: its mode, the peers' relative speeds and the run's diloco settings."""

    mode: str
    speeds: tuple[float, ...]
    outer_steps: int
    inner_steps: int
    diloco: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.mode

    @property
    def timeout_s(self) -> float:
        # a fixed-H period of the slowest peer is about 1 / its speed times the fastest one's (PERIOD_S)
        period = PERIOD_S / min(self.speeds) if self.mode == "fixed" else PERIOD_S
        return START_S + self.outer_steps * (period * 2.0 + 60.0)


def plan(mode: str, outer_steps: int, done: Sequence[dict[str, Any]]) -> Config:
    """The configuration of ``mode``, sized from the runs ``done`` before it: ``fixed`` runs the steps the
    fastest peers took per time-boxed period (so its fast peers train as long as there, and wait for the
    slow ones); ``equal`` runs four speed-1 peers with the overlapped (else time-boxed) network's tokens."""
    timed = {"period_s": PERIOD_S}
    if mode == "timeboxed":
        return Config(mode, SPEEDS, outer_steps, DEFAULT_INNER_STEPS, timed)
    if mode == "overlapped":
        return Config(mode, SPEEDS, outer_steps, DEFAULT_INNER_STEPS, {**timed, "overlap": True})
    boxed = [c for c in done if c["mode"] in ("timeboxed", "overlapped") and c.get("tokens")]
    if mode == "fixed":
        fast = [t for c in boxed[:1] for t, speed in zip(c["tokens_per_peer"], c["speeds"], strict=True)
                if speed == max(SPEEDS)]
        inner = round(statistics.median(fast) / (outer_steps * BATCH * SEQ_LEN)) if fast else DEFAULT_INNER_STEPS
        return Config(mode, SPEEDS, outer_steps, max(1, inner))
    ref = boxed[-1]["tokens"] if boxed else len(SPEEDS) * outer_steps * DEFAULT_INNER_STEPS * BATCH * SEQ_LEN
    return Config(mode, (1.0,) * len(SPEEDS), outer_steps,
                  max(1, round(ref / (len(SPEEDS) * outer_steps * BATCH * SEQ_LEN))))


def run_config(cfg: Config, *, workdir: Path, corpus: str) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Run ``cfg`` on a fresh testbed until every peer holds outer step K or the time limit; each peer's
    diary up to step K and the run's facts."""
    run = small_run(
        name=f"volunteers-{cfg.name}", sources={"corpus": corpus}, model={"preset": PRESET},
        stage={"name": "all", "tokens": 10_000_000, "seq_len": SEQ_LEN},
        data={"docs_per_shard": 3, "validation_fraction": 0.2, "validation_max_docs": 8},
        diloco={"inner_steps": cfg.inner_steps, "batch_size": BATCH, "matchmaking_time_s": 2.0,
                "averaging_timeout_s": 60.0, "min_group_size": 2, **cfg.diloco},
        codec=CODEC, trust={"aggregator": "centered_clip"},
        coordinator={"heartbeat_interval_s": 0.5, "lease_timeout_s": 30.0},
    )
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run: peers would resume from an older run's checkpoints
    (workdir / "net").mkdir(parents=True)
    options = NetworkOptions(config=write_run_config(run, workdir), workdir=workdir / "net", peers=0,
                             max_outer_steps=cfg.outer_steps, threads_per_peer=1,
                             extra_peer_args=("--no-progress", "--eval-every", str(cfg.outer_steps)))
    links = Links(uplink=f"{UPLINK_MBIT}mbit", downlink=f"{DOWNLINK_MBIT}mbit")
    started = time.monotonic()
    with Testbed() as bed:
        network = InternetNetwork(options, bed=bed)
        diaries = [network.peer_workdir(i) / EVENTS_FILE for i in range(len(cfg.speeds))]
        try:
            network.start_coordinator()
            for speed in cfg.speeds:
                network.start_peer(kind=PUBLIC, links=links,
                                   extra_args=["--throttle", f"{BASE_THROTTLE * speed:g}"])
            while time.monotonic() - started < cfg.timeout_s:
                codes = [proc.poll() for proc in network.peers]
                if all(code is not None for code in codes):
                    break
                time.sleep(POLL_S)
            codes = [proc.poll() for proc in network.peers]
        finally:
            network.stop()
    events = [read_events(path) for path in diaries]
    facts = {"wall_s": time.monotonic() - started, "exit_codes": codes, "timeout_s": cfg.timeout_s,
             "reached_k": [reached(e, cfg.outer_steps) for e in events], "workdir": str(workdir)}
    return [until_step(e, cfg.outer_steps) for e in events], facts


def summarize(cfg: Config, diaries: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """The figures of one configuration (module docstring)."""
    stats = [peer_stats(f"peer-{i}", list(events), []) for i, events in enumerate(diaries)]
    steps = [[e for e in events if e.get("event") == "outer_step"] for events in diaries]
    bpbs = [e["val_bpb"] for e in steps[0] if e.get("val_bpb") is not None]
    inner = [s for p in stats for s in p.inner_s]
    round_s = [s for p in stats for s in p.round_s]
    return {
        "peer_utilization": [p.in_steps_fraction for p in stats],
        "val_bpb": bpbs[-1] if bpbs else None,
        "tokens": sum(int(e.get("tokens", 0)) for peer in steps for e in peer),
        "tokens_per_peer": [sum(int(e.get("tokens", 0)) for e in peer) for peer in steps],
        "group_sizes": sorted({int(e.get("group_size", 0)) for peer in steps for e in peer}),
        "same_hashes": same_hashes(diaries),
        "round_s": statistics.median(round_s) if round_s else None,
        "inner_s": statistics.median(inner) if inner and not cfg.diloco.get("overlap") else None,
        # overlapped rounds run during the next period: no blocking share (and round_start follows the last
        # outer step at once, so inner_s measures nothing there)
        "round_share": (statistics.median(round_s) / statistics.median(inner))
        if round_s and inner and not cfg.diloco.get("overlap") else None,
        "bytes_per_round": statistics.median([b for p in stats for b in p.bytes_sent]) if stats[0].bytes_sent else None,
    }


def measure(cfg: Config, *, workdir: Path, corpus: str) -> dict[str, Any]:
    """One row of the report; a run that fails keeps what it measured plus ``error``."""
    row: dict[str, Any] = {"name": cfg.name, "mode": cfg.mode, "speeds": list(cfg.speeds),
                           "outer_steps": cfg.outer_steps, "inner_steps": cfg.inner_steps,
                           "diloco": cfg.diloco, "uplink_mbit": UPLINK_MBIT}
    logger.info("%s: speeds %s, %d outer steps (limit %.0f s)", cfg.name, cfg.speeds, cfg.outer_steps, cfg.timeout_s)
    try:
        diaries, facts = run_config(cfg, workdir=workdir / cfg.name, corpus=corpus)
    except Exception as exc:  # one broken configuration must not lose the others' results
        logger.exception("%s failed", cfg.name)
        return {**row, "peer_utilization": [], "val_bpb": None, "tokens": 0, "error": f"{type(exc).__name__}: {exc}"}
    row.update(summarize(cfg, diaries), **facts)
    if not all(facts["reached_k"]) or any(code not in (0, None) for code in facts["exit_codes"]):
        row["error"] = (f"reached step {cfg.outer_steps}: {facts['reached_k']}, exit codes {facts['exit_codes']}; "
                        f"see {workdir / cfg.name / 'net'}/peer-*.log")
    logger.info("%s: utilization %s, val bpb %s, tokens %d, groups %s, same hashes %s", cfg.name,
                row["peer_utilization"], row["val_bpb"], row["tokens"], row.get("group_sizes"), row.get("same_hashes"))
    return row


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    lines = ["| mode | speeds | utilization per peer | val bpb | tokens (per peer) | groups | round s / inner s "
             "(share) | same θ | wall s | error |", "|---|---|---|---:|---|---|---|---|---:|---|"]
    for c in report["configs"]:
        util = ", ".join(_fmt(u, ".2f") for u in c.get("peer_utilization", []))
        per_peer = ", ".join(str(t) for t in c.get("tokens_per_peer", []))
        lines.append(
            f"| {c['mode']} | {', '.join(f'{s:g}' for s in c['speeds'])} | {util} | {_fmt(c.get('val_bpb'), '.4f')} | "
            f"{c.get('tokens', 0)} ({per_peer}) | {','.join(map(str, c.get('group_sizes', [])))} | "
            f"{_fmt(c.get('round_s'), '.1f')} / {_fmt(c.get('inner_s'), '.1f')} ({_fmt(c.get('round_share'), '.2f')}) | "
            f"{'yes' if c.get('same_hashes') else 'NO'} | {_fmt(c.get('wall_s'), '.0f')} | {c.get('error', '')} |")
    return "\n".join([*lines, "", report["note"], ""])


NOTE = ("Four peers on their own testbed hosts, 5 Mbit/s tbf uplinks, 100 Mbit/s downlinks, no latency emulation; "
        "debug preset, E8 4-bit, centered_clip. Speeds emulated with --throttle (speed 1 = 0.5 of this host per peer: "
        "four peers share two cores); a throttled peer's sleep counts as step time and frees CPU for the others. "
        "utilization = share of a peer's outer cycles spent in (emulated) optimizer steps. val bpb: peer 0 at the last "
        "outer step. equal: four speed-1 peers, blocking, with about the overlapped network's tokens.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.volunteers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_OUTER_STEPS} outer steps per run "
                        f"(default {FULL_OUTER_STEPS})")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, required=True, help="the JSON report (and a .md table next to it)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lila-bench-volunteers"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if reason := available():
        print(f"bench.volunteers: {reason}", file=sys.stderr)
        return 2
    outer = QUICK_OUTER_STEPS if args.quick else FULL_OUTER_STEPS
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = write_repeated_corpus(args.workdir / "corpus.jsonl", copies=CORPUS_COPIES)
    report: dict[str, Any] = {"configs": [], "note": NOTE, "machine": {"cpu_count": os.cpu_count()},
                              "command": "python -m bench.volunteers " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for mode in ("timeboxed", "overlapped", "fixed", "equal"):  # fixed and equal are sized from the first two
        if mode not in args.modes:
            continue
        cfg = plan(mode, outer, report["configs"])
        report["configs"].append(measure(cfg, workdir=args.workdir, corpus=corpus))
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each run: a crash keeps the rest
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

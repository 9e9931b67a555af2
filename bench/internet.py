# SPDX-License-Identifier: AGPL-3.0-or-later
"""What averaging costs on the links volunteers have: a LILA network across the namespaced internet of
:mod:`lila_run.testbed` (:class:`lila_run.internet.InternetNetwork`), 2 public peers and 2 behind their own
home NAT, every host on a ``tbf``-shaped uplink and a 100 Mbit/s downlink::

    python -m bench.internet --quick --out bench/results/internet-quick.json
    python -m bench.internet --quick --presets debug --uplinks 20 --out /tmp/internet.json

Configurations: the presets ``debug`` and ``lila-20m`` × uplinks of 100, 20 and 5 Mbit/s; E8 4-bit
pseudo-gradients, mean aggregation, peers with ``--eval-every 0`` and one torch thread each. Per
configuration, from the peers' diaries (``outer-steps.jsonl``, :mod:`peer.events`), reduced by
:func:`bench.network.watch.peer_stats`:

- ``round_s``: the median ``seconds`` of every applied round with a group of 2 or more, over all peers;
- ``bytes_per_peer``: the median ``bytes_sent`` of those rounds (per peer per round), and
  ``expected_s`` = bytes_per_peer × 8 / uplink, the time the uplink alone needs; ``round_ratio`` =
  round_s / expected_s;
- ``utilization``: each peer's share of its outer cycles' wall time spent inside optimizer steps
  (``in_steps_fraction`` of bench.network: compute utilization without a standalone reference);
- ``same_hashes``: every outer step's ``params_sha256`` agreed across the peers that logged it.

Latency, jitter and loss are NOT emulated (this kernel has no ``netem``): round trips stay
sub-millisecond, so the figures show what bandwidth costs, not what distance costs. Needs root for the
namespaces; where they cannot be made it exits 2 with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.network.measure import make_repo_importable
from bench.network.watch import peer_stats
from lila_run.harness import small_run, write_corpus, write_run_config
from lila_run.internet import HOME, PUBLIC, InternetNetwork, Links
from lila_run.local_network import NetworkOptions
from lila_run.testbed import Testbed, available
from peer.events import EVENTS_FILE, read_events

logger = logging.getLogger("bench.internet")

PRESETS = ("debug", "lila-20m")
UPLINKS_MBIT = (100, 20, 5)
DOWNLINK_MBIT = 100
PUBLIC_PEERS = 2
NAT_PEERS = 2
CODEC = {"name": "e8", "bits": 4, "block_size": 64}
TOKENIZER = "fineweb-edu-2048"
SEQ_LEN = 64
BATCH = 1
CORPUS_DOCS = 150  # the whole bundled sample: ~137 K tokens, ~110 K of them in training shards
CORPUS_COPIES = 5
TRAIN_TOKENS = CORPUS_COPIES * 105_000  # a run of 4 × H × SEQ_LEN × K tokens beyond this runs out of shards
POLL_S = 1.0
MATCHMAKING_S = 2.0
HEARTBEAT_S = 0.5
LEASE_TIMEOUT_S = 15.0
START_S = 120.0  # coordinator + four peers coming up on a 2-core host, in a run's time limit
QUICK_OUTER_STEPS = 3
FULL_OUTER_STEPS = 6
NOTE = ("Latency, jitter and loss are not emulated (this kernel has no netem): links are tbf-shaped rates with "
        "sub-millisecond round trips. bytes_per_peer is the median over every peer's rounds; relayed (NAT'd) "
        "peers own no part of the all-reduce, so public peers send ~2x as much (bytes_by_kind); the busiest "
        "uplink bounds a round (expected_busiest_s). expected_s = bytes_per_peer * 8 / uplink. utilization = "
        "share of a peer's outer cycles spent inside optimizer steps (bench.network's in_steps_fraction).")


@dataclass(frozen=True)
class Plan:
    """A preset's run shape on a 2-core host running four peers. ``inner_steps``: the public peers' first
    inner period (two peers training while the NAT'd two start) must outlast the NAT'd peers' longer
    start-up (the coordinator's 3 s dial-back, then the daemon: 4-7 s in all), or round 1 is a group of two
    and the NAT'd peers download the state instead; later periods, four peers sharing two cores, take ~2.5×
    longer. ``averaging_timeout_s``: above a round at 5 Mbit/s; ``cycle_s``: the most an outer cycle may
    take (a run's limit is ``START_S`` + K × ``cycle_s``)."""

    inner_steps: int
    averaging_timeout_s: float
    cycle_s: float


# debug: ~0.02 s per step with two peers training, ~0.07 s with four: first period ~8 s, then ~28 s.
# lila-20m: ~0.25 s / ~0.6 s per step: ~10 s, then ~24 s. Its E8 4-bit update is ~11 MB: a peer sends
# 2·(N−1)/N × that in a 4-peer all-reduce, ~26 s at 5 Mbit/s.
PLANS = {"debug": Plan(inner_steps=400, averaging_timeout_s=30.0, cycle_s=90.0),
         "lila-20m": Plan(inner_steps=40, averaging_timeout_s=180.0, cycle_s=150.0)}


@dataclass(frozen=True)
class Config:
    """One measured network: a preset, the uplink of every peer's host, K outer steps."""

    preset: str
    uplink_mbit: int
    outer_steps: int

    @property
    def name(self) -> str:
        return f"{self.preset}-{self.uplink_mbit}mbit"

    @property
    def plan(self) -> Plan:
        return PLANS[self.preset]

    @property
    def timeout_s(self) -> float:
        return START_S + self.outer_steps * self.plan.cycle_s


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def same_hashes(diaries: Sequence[Sequence[dict[str, Any]]]) -> bool:
    """True when at every outer step all peers that logged it (``state``/``outer_step``) hold one
    ``params_sha256``; False when they differ or nobody logged any."""
    table: dict[int, set[str]] = defaultdict(set)
    for events in diaries:
        for e in events:
            if e.get("event") in ("state", "outer_step") and e.get("params_sha256"):
                table[int(e["outer_step"])].add(e["params_sha256"])
    return bool(table) and all(len(hashes) == 1 for hashes in table.values())


def summarize(diaries: Sequence[Sequence[dict[str, Any]]], kinds: Sequence[str], *,
              uplink_mbit: float) -> dict[str, Any]:
    """The figures of one configuration from its peers' diaries (``kinds``: each peer's host kind)."""
    stats = [peer_stats(f"peer-{i}", list(events), []) for i, events in enumerate(diaries)]
    round_s = _median([s for p in stats for s in p.round_s])
    sent = _median([b for p in stats for b in p.bytes_sent])
    expected = sent * 8 / (uplink_mbit * 1e6) if sent else None
    utilization = [p.in_steps_fraction for p in stats]
    # a relayed (NAT'd) peer owns no part of the all-reduce while public peers are in its group: the public
    # peers send ~2× what it sends, and the busiest uplink bounds the round
    by_kind = {kind: _median([b for p, k in zip(stats, kinds, strict=True) if k == kind for b in p.bytes_sent])
               for kind in sorted(set(kinds))}
    busiest = max((b for b in by_kind.values() if b is not None), default=None)
    busiest_s = busiest * 8 / (uplink_mbit * 1e6) if busiest else None
    present = [u for u in utilization if u is not None]
    return {
        "round_s": round_s, "bytes_per_peer": sent,
        "utilization": statistics.fmean(present) if present else None, "utilization_per_peer": utilization,
        "same_hashes": same_hashes(diaries), "expected_s": expected,
        "round_ratio": round_s / expected if round_s is not None and expected else None,
        "bytes_by_kind": by_kind, "expected_busiest_s": busiest_s,
        "round_ratio_busiest": round_s / busiest_s if round_s is not None and busiest_s else None,
        "group_sizes": sorted({g for p in stats for g in p.group_sizes}),
        "matchmaking_s": _median([s for p in stats for s in p.matchmaking_s]),
        "allreduce_s": _median([s for p in stats for s in p.allreduce_s]),
        "inner_s": _median([s for p in stats for s in p.inner_s]),
        "after_round_s": _median([s for p in stats for s in p.after_s]),
        "per_peer": [{"peer": p.name, "kind": kind, "outer_steps": p.outer_steps, "rounds": p.rounds,
                      "round_s": _median(p.round_s), "bytes_sent": p.bytes_per_outer_step,
                      "bytes_received": _median(p.bytes_received), "utilization": p.in_steps_fraction,
                      "tokens_per_s": p.tokens_per_s}
                     for p, kind in zip(stats, kinds, strict=True)],
    }


def until_step(events: Sequence[dict[str, Any]], outer_steps: int) -> list[dict[str, Any]]:
    """A diary cut after outer step ``outer_steps``: the run measured is the network's first K steps."""
    return [e for e in events if int(e.get("outer_step", e.get("round", 0))) <= outer_steps]


def reached(events: Sequence[dict[str, Any]], outer_steps: int) -> bool:
    return any(e.get("event") in ("state", "outer_step") and int(e.get("outer_step", -1)) >= outer_steps
               for e in events)


def write_repeated_corpus(path: Path, *, copies: int) -> str:
    """``write_corpus``'s bundled sample, ``copies`` times under new ids (``doc-7-r2``): enough shards for
    long inner periods. A bandwidth bench does not mind seeing a text twice."""
    once = Path(write_corpus(path.with_suffix(".once.jsonl"), docs=CORPUS_DOCS).removeprefix("jsonl:"))
    rows = [json.loads(line) for line in once.read_text().splitlines() if line]
    with path.open("w") as out:
        for copy in range(copies):
            for row in rows:
                out.write(json.dumps({"id": f"{row['id']}-r{copy}", "text": row["text"]}) + "\n")
    return f"jsonl:{path}"


def run_config(cfg: Config, *, workdir: Path, corpus: str) -> tuple[list[list[dict[str, Any]]], list[str],
                                                                    dict[str, Any]]:
    """Run ``cfg`` on a fresh testbed (closed, with every process, on leaving) until every peer holds outer
    step K (a peer that missed round 1 would go one step further, alone: it is stopped there) or the time
    limit; returns each peer's diary up to step K, its host kind and the run's facts (wall seconds, exit
    codes: None for a peer stopped by the bench)."""
    plan = cfg.plan
    run = small_run(
        name=f"internet-{cfg.name}", sources={"corpus": corpus}, model={"preset": cfg.preset},
        stage={"name": "all", "tokens": 10_000_000, "seq_len": SEQ_LEN},
        data={"tokenizer": TOKENIZER, "docs_per_shard": 3, "validation_fraction": 0.2, "validation_max_docs": 4},
        diloco={"inner_steps": plan.inner_steps, "batch_size": BATCH, "matchmaking_time_s": MATCHMAKING_S,
                "averaging_timeout_s": plan.averaging_timeout_s},
        codec=CODEC, trust={"aggregator": "centered_clip"},
        coordinator={"heartbeat_interval_s": HEARTBEAT_S, "lease_timeout_s": LEASE_TIMEOUT_S},
    )
    if (NAT_PEERS + PUBLIC_PEERS) * plan.inner_steps * BATCH * SEQ_LEN * cfg.outer_steps > TRAIN_TOKENS:
        logger.warning("%s may run out of training shards before %d outer steps", cfg.name, cfg.outer_steps)
    (workdir / "net").mkdir(parents=True, exist_ok=True)
    options = NetworkOptions(config=write_run_config(run, workdir), workdir=workdir / "net", peers=0,
                             max_outer_steps=cfg.outer_steps, threads_per_peer=1,
                             extra_peer_args=("--no-progress", "--eval-every", "0"))
    links = Links(uplink=f"{cfg.uplink_mbit}mbit", downlink=f"{DOWNLINK_MBIT}mbit")
    kinds = [HOME] * NAT_PEERS + [PUBLIC] * PUBLIC_PEERS  # NAT'd first: they take a dial-back longer to start
    started = time.monotonic()
    with Testbed() as bed:
        network = InternetNetwork(options, bed=bed)
        diaries = [network.peer_workdir(i) / EVENTS_FILE for i in range(len(kinds))]
        try:
            network.start_coordinator()
            for kind in kinds:
                network.start_peer(kind=kind, links=links)
            while time.monotonic() - started < cfg.timeout_s:
                codes = [proc.poll() for proc in network.peers]
                if all(code is not None or reached(read_events(path), cfg.outer_steps)
                       for code, path in zip(codes, diaries, strict=True)):
                    break
                time.sleep(POLL_S)
            codes = [proc.poll() for proc in network.peers]
        finally:
            network.stop()
    facts = {"wall_s": time.monotonic() - started, "exit_codes": codes, "timeout_s": cfg.timeout_s,
             "exit_codes_after_stop": [proc.poll() for proc in network.peers], "workdir": str(workdir)}
    events = [read_events(path) for path in diaries]
    facts["reached_k"] = [reached(e, cfg.outer_steps) for e in events]
    return [until_step(e, cfg.outer_steps) for e in events], kinds, facts


def measure(cfg: Config, *, workdir: Path, corpus: str) -> dict[str, Any]:
    """One row of the report; a run that fails or overruns keeps what it measured plus ``error``."""
    plan = cfg.plan
    row: dict[str, Any] = {"name": cfg.name, "preset": cfg.preset, "uplink_mbit": cfg.uplink_mbit,
                           "downlink_mbit": DOWNLINK_MBIT, "peers": NAT_PEERS + PUBLIC_PEERS, "nat_peers": NAT_PEERS,
                           "outer_steps_target": cfg.outer_steps, "inner_steps": plan.inner_steps,
                           "averaging_timeout_s": plan.averaging_timeout_s}
    logger.info("%s: %d outer steps of %d inner steps (limit %.0f s)", cfg.name, cfg.outer_steps,
                plan.inner_steps, cfg.timeout_s)
    try:
        diaries, kinds, facts = run_config(cfg, workdir=workdir / cfg.name, corpus=corpus)
    except Exception as exc:  # one broken configuration must not lose the others' results
        logger.exception("%s failed", cfg.name)
        return {**row, "round_s": None, "bytes_per_peer": None, "utilization": None, "same_hashes": False,
                "error": f"{type(exc).__name__}: {exc}"}
    row.update(summarize(diaries, kinds, uplink_mbit=cfg.uplink_mbit), **facts)
    failed = [code for code in facts["exit_codes"] if code not in (0, None)]
    if failed or not all(facts["reached_k"]):
        row["error"] = (f"peers reached outer step {cfg.outer_steps}: {facts['reached_k']}, exit codes "
                        f"{facts['exit_codes']} (None: stopped by the bench, at step K or the "
                        f"{cfg.timeout_s:.0f} s limit); see {workdir / cfg.name / 'net'}/peer-*.log")
    logger.info("%s: round %s s, %s bytes/peer, groups %s, same hashes %s", cfg.name, row["round_s"],
                row["bytes_per_peer"], row["group_sizes"], row["same_hashes"])
    return row


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (one row per configuration) with its note."""
    lines = ["| config | uplink Mbit/s | peers (NAT'd) | groups | round s | expected s | ratio | "
             "MB sent/peer/round (public / NAT'd) | busiest uplink s (ratio) | utilization (per peer) | same θ | wall s | error |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|---|---|---:|---|"]
    for c in report["configs"]:
        per_peer = ", ".join(_fmt(u, ".2f") for u in c.get("utilization_per_peer", []))
        kinds = c.get("bytes_by_kind", {})
        mb = [_fmt(None if b is None else b / 1e6, ".2f") for b in (c["bytes_per_peer"], kinds.get(PUBLIC),
                                                                       kinds.get(HOME))]
        sent = f"{mb[0]} ({mb[1]} / {mb[2]})"
        lines.append(
            f"| {c['name']} | {c['uplink_mbit']} | {c['peers']} ({c['nat_peers']}) | "
            f"{','.join(map(str, c.get('group_sizes', []))) or '–'} | {_fmt(c['round_s'], '.2f')} | "
            f"{_fmt(c.get('expected_s'), '.2f')} | {_fmt(c.get('round_ratio'), '.1f')} | {sent} | "
            f"{_fmt(c.get('expected_busiest_s'), '.2f')} ({_fmt(c.get('round_ratio_busiest'), '.1f')}) | "
            f"{_fmt(c['utilization'], '.2f')} ({per_peer}) | {'yes' if c['same_hashes'] else 'NO'} | "
            f"{_fmt(c.get('wall_s'), '.0f')} | {c.get('error', '')} |")
    return "\n".join([*lines, "", f"{report['note']} Machine: {report['machine']['cpu_count']} CPUs.", ""])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.internet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_OUTER_STEPS} outer steps per run "
                        f"(default {FULL_OUTER_STEPS})")
    parser.add_argument("--outer-steps", type=int, help="outer steps per run (overrides --quick)")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--uplinks", nargs="+", type=int, default=list(UPLINKS_MBIT), help="Mbit/s")
    parser.add_argument("--out", type=Path, required=True, help="the JSON report (and a .md table next to it)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lila-bench-internet"),
                        help="run folders, diaries and logs (kept)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if reason := available():
        print(f"bench.internet: {reason}", file=sys.stderr)
        return 2
    make_repo_importable()
    outer = args.outer_steps or (QUICK_OUTER_STEPS if args.quick else FULL_OUTER_STEPS)
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = write_repeated_corpus(args.workdir / "corpus.jsonl", copies=CORPUS_COPIES)
    report: dict[str, Any] = {"configs": [], "note": NOTE,
                              "machine": {"cpu_count": os.cpu_count(), "threads_per_peer": 1},
                              "command": "python -m bench.internet " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for cfg in [Config(p, u, outer) for p in args.presets for u in args.uplinks]:
        report["configs"].append(measure(cfg, workdir=args.workdir, corpus=corpus))
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each run: a crash keeps the rest
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

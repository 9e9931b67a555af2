# SPDX-License-Identifier: AGPL-3.0-or-later
"""Averaging round time and bytes on 127.0.0.1: our all-reduce over hivemind's P2P (peer/averaging).

Each peer is a separate process (``bench.averaging_worker``, started as this module with ``--worker``, in
its own process group); the bench process runs the bootstrap DHT. For every (size, codec) it runs a few
rounds back to back and reports, per round and peer, the all-reduce time (group fixed → result decoded),
the matchmaking time (fixed by ``matchmaking_time``), bytes sent/received, and whether all peers got
bitwise-identical results. ``--engine hivemind`` runs hivemind's DecentralizedAverager on the same sizes
instead, for comparison.

    python -m bench.averaging --quick --out averaging.json
    python -m bench.averaging --peers 3 --sizes 1000000 10000000 --codecs fp32 fp16 e8 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.averaging_worker import POLL_S, THREADS, WORKER_TIMEOUT_S, hivemind_worker, worker
from lila_run.harness import signal_group
from peer.averaging import Transport

QUICK_SIZES = [1_000_000, 10_000_000]
QUICK_ROUNDS = 3
DEFAULT_ROUNDS = 5
STARTUP_TIMEOUT_S = 120.0
MB = 1e6
REPO = Path(__file__).resolve().parents[1]  # the workers run as python -m bench.averaging from here


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    logging.getLogger("hivemind").setLevel(logging.WARNING)
    bootstrap = Transport.create()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="lila-bench-avg-") as tmp:
        outdir = Path(tmp)
        try:
            names = [f"peer{i}" for i in range(args.peers)]
            for name in names:
                command = [
                    sys.executable, "-m", "bench.averaging", "--worker", "--engine", args.engine, "--name", name, "--outdir", str(outdir),
                    "--matchmaking-time", str(args.matchmaking_time), "--rounds", str(args.rounds),
                    "--sizes", *map(str, args.sizes), "--codecs", *args.codecs,
                    "--initial-peers", *bootstrap.visible_maddrs(),
                ]  # fmt: skip
                procs.append(subprocess.Popen(command, start_new_session=True, cwd=REPO))
            _wait(lambda: all((outdir / f"{n}.ready").exists() for n in names), procs, STARTUP_TIMEOUT_S)
            (outdir / "go").write_text("1")
            _wait(lambda: all((outdir / f"{n}.json").exists() for n in names), procs, WORKER_TIMEOUT_S)
            per_peer = {n: json.loads((outdir / f"{n}.json").read_text()) for n in names}
        finally:
            for proc in procs:
                _kill_group(proc)
            bootstrap.shutdown()
    return summarize(per_peer, args)


def _wait(done: Any, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        failed = [p.args[p.args.index("--name") + 1] for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            raise SystemExit(f"bench peers failed or timed out: {failed or 'timeout'}")
        time.sleep(POLL_S)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGKILL)
    proc.wait()


def _median(values: Any, scale: float = 1.0) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else statistics.median(values) * scale


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def summarize(per_peer: dict[str, list[dict]], args: argparse.Namespace) -> dict[str, Any]:
    rounds = list(zip(*per_peer.values(), strict=True))  # per round: one record per peer
    rows = []
    for size in args.sizes:
        for codec in args.codecs:
            mine = [r for r in rounds if r[0]["size"] == size and r[0]["codec"] == codec]
            flat = [record for group in mine for record in group]
            rows.append(
                {
                    "engine": args.engine,
                    "params": size,
                    "codec": codec,
                    "peers": args.peers,
                    "rounds": len(mine),
                    "all_ok": all(r["status"] == "ok" and r["group_size"] == args.peers for r in flat),
                    "identical": all(len({r["hash"] for r in group}) == 1 for group in mine),
                    "allreduce_s_median": _median(r["allreduce_s"] for r in flat),
                    "allreduce_s_max": max(r["allreduce_s"] for r in flat),
                    "matchmaking_s_median": _median(r["matchmaking_s"] for r in flat),
                    "round_s_median": _median(r["round_s"] for r in flat),
                    "mb_sent_per_peer": _median([r["bytes_sent"] for r in flat], scale=1 / MB),
                    "mb_received_per_peer": _median([r["bytes_received"] for r in flat], scale=1 / MB),
                }
            )
    return {
        "bench": "averaging",
        "engine": args.engine,
        "matchmaking_time": args.matchmaking_time,
        "rows": rows,
        "per_peer": per_peer,
    }


def print_table(result: dict[str, Any]) -> None:
    header = f"{'engine':>8} {'params':>10} {'codec':>5} {'peers':>5} {'ok':>3} {'same':>4} {'allreduce s':>12} {'max s':>6} {'match s':>7} {'MB sent':>8} {'MB recv':>8}"
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        print(
            f"{row['engine']:>8} {row['params']:>10} {row['codec']:>5} {row['peers']:>5} "
            f"{'y' if row['all_ok'] else 'n':>3} {'y' if row['identical'] else 'n':>4} "
            f"{_fmt(row['allreduce_s_median'], 12, 3)} {_fmt(row['allreduce_s_max'], 6, 3)} "
            f"{_fmt(row['matchmaking_s_median'], 7, 2)} {_fmt(row['mb_sent_per_peer'], 8, 2)} "
            f"{_fmt(row['mb_received_per_peer'], 8, 2)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.averaging", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 M and 10 M params, fp32, 3 rounds")
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=QUICK_SIZES)
    parser.add_argument(
        "--codecs", nargs="+", default=["fp32"], help="fp32, fp16 or any lila_codec name (e8 = 4-bit E8)"
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--matchmaking-time", type=float, default=1.0)
    parser.add_argument(
        "--engine",
        choices=["lila", "hivemind"],
        default="lila",
        help="lila = peer/averaging; hivemind = DecentralizedAverager baseline (fp32; step() time, which "
        "includes its matchmaking; no byte counts)",
    )
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    parser.add_argument("--initial-peers", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return hivemind_worker(args) if args.engine == "hivemind" else worker(args)
    if args.quick:
        args.sizes, args.codecs, args.rounds = QUICK_SIZES, ["fp32"], QUICK_ROUNDS
    if args.peers < 2:
        parser.error("--peers must be at least 2")
    if args.engine == "hivemind" and args.codecs != ["fp32"]:
        parser.error("the hivemind baseline runs fp32 only (its 8-bit codecs are broken under numpy 2)")
    result = run_bench(args)
    print_table(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Averaging round time and bytes on 127.0.0.1: our all-reduce over hivemind's P2P (peer/averaging).

Each peer is a separate process (this script with ``--worker``, in its own process group); the bench
process runs the bootstrap DHT. For every (size, codec) it runs a few rounds back to back and reports,
per round and peer, the all-reduce time (group fixed → result decoded), the matchmaking time (fixed
by ``matchmaking_time``), bytes sent/received, and whether all peers got bitwise-identical results.

    python bench/averaging.py --quick --out averaging.json
    python bench/averaging.py --peers 3 --sizes 1000000 10000000 --codecs fp32 fp16 e8 --rounds 5

Compare with hivemind's DecentralizedAverager in /work/shared/notes/hivemind-facts.md
(10 M fp32, 2 peers: 0.43–0.56 s and 39 MB per peer per round).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from peer.averaging import (  # noqa: E402
    Averager,
    AveragingConfig,
    StaticTokenAuthorizer,
    Transport,
    get_aggregator,
    params_hash,
)

RUN_ID = "bench"
TOKEN = b"bench-token"
QUICK_SIZES = [1_000_000, 10_000_000]
QUICK_ROUNDS = 3
DEFAULT_ROUNDS = 5
WORKER_TIMEOUT_S = 900
POLL_S = 0.05
STARTUP_TIMEOUT_S = 120.0
THREADS = 1
MB = 1e6


class RawCodec:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def encode(self, tensor: torch.Tensor, *, seed: int = 0) -> bytes:
        return tensor.detach().to(self.dtype).contiguous().numpy().tobytes()

    def decode(self, payload: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(payload), dtype=self.dtype).to(torch.float32)


def make_codec(name: str) -> Any:
    """fp32/fp16 raw bytes, or a lila_codec codec (``e8`` = E8 lattice, 4 bits)."""
    try:
        from lila_codec import get_codec
    except ImportError:
        get_codec = None
    if name in ("fp32", "fp16") and get_codec is None:
        return RawCodec(torch.float32 if name == "fp32" else torch.float16)
    if get_codec is None:
        raise SystemExit(f"codec {name!r} needs lila_codec.get_codec, which is not available yet")
    return get_codec("e8", bits=4) if name == "e8" else get_codec(name)


def config(matchmaking_time: float) -> AveragingConfig:
    return AveragingConfig(
        matchmaking_time=matchmaking_time,
        join_timeout=2.0,
        request_timeout=2.0,
        part_timeout=30.0,
        result_timeout=30.0,
    )


# ---------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> int:
    signal.alarm(WORKER_TIMEOUT_S)
    torch.set_num_threads(THREADS)
    logging.basicConfig(level=logging.WARNING)
    outdir = Path(args.outdir)
    transport = Transport.create(initial_peers=args.initial_peers)
    averager = Averager(
        transport,
        run_id=RUN_ID,
        credential=TOKEN,
        authorize=StaticTokenAuthorizer([TOKEN]),
        max_numel=max(args.sizes),
        config=config(args.matchmaking_time),
    )
    (outdir / f"{args.name}.ready").write_text(transport.peer_id)
    while not (outdir / "go").exists():
        time.sleep(POLL_S)
    records = []
    k = 0
    for size in args.sizes:
        generator = torch.Generator().manual_seed(int(args.name.removeprefix("peer")))
        vector = torch.randn(size, generator=generator)
        for codec_name in args.codecs:
            codec = make_codec(codec_name)
            for _ in range(args.rounds):
                started = time.monotonic()
                result = averager.average(k, vector, codec=codec, aggregator=get_aggregator("mean"))
                records.append(
                    {
                        "round": k,
                        "size": size,
                        "codec": codec_name,
                        "status": result.status,
                        "group_size": result.group_size,
                        "matchmaking_s": result.matchmaking_s,
                        "allreduce_s": result.allreduce_s,
                        "round_s": time.monotonic() - started,
                        "bytes_sent": result.bytes_sent,
                        "bytes_received": result.bytes_received,
                        "hash": params_hash([result.average]) if result.average is not None else None,
                    }
                )
                k += 1
    (outdir / f"{args.name}.json").write_text(json.dumps(records))
    averager.shutdown()
    transport.shutdown()
    return 0


def hivemind_worker(args: argparse.Namespace) -> int:
    """Baseline: hivemind's DecentralizedAverager on the same sizes (fp32 only, no byte counts)."""
    import hivemind

    signal.alarm(WORKER_TIMEOUT_S)
    torch.set_num_threads(THREADS)
    logging.basicConfig(level=logging.ERROR)
    outdir = Path(args.outdir)
    dht = hivemind.DHT(initial_peers=args.initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    (outdir / f"{args.name}.ready").write_text(str(dht.peer_id))
    while not (outdir / "go").exists():
        time.sleep(POLL_S)
    records = []
    for size in args.sizes:
        generator = torch.Generator().manual_seed(int(args.name.removeprefix("peer")))
        averager = hivemind.averaging.DecentralizedAverager(
            [torch.randn(size, generator=generator)],
            dht,
            prefix=f"bench-{size}",
            target_group_size=args.peers,
            min_group_size=args.peers,
            min_matchmaking_time=args.matchmaking_time,
            request_timeout=min(1.0, args.matchmaking_time / 2),
            start=True,
        )
        for _ in range(args.rounds):
            started = time.monotonic()
            group = averager.step(timeout=WORKER_TIMEOUT_S / 4)
            elapsed = time.monotonic() - started
            with averager.get_tensors() as tensors:
                digest = params_hash(tensors)
            records.append(
                {
                    "size": size, "codec": "fp32", "status": "ok" if group else "failed",
                    "group_size": len(group or ()), "matchmaking_s": None, "allreduce_s": elapsed,
                    "round_s": elapsed, "bytes_sent": None, "bytes_received": None, "hash": digest,
                }
            )  # fmt: skip
        averager.shutdown()
    (outdir / f"{args.name}.json").write_text(json.dumps(records))
    dht.shutdown()
    return 0


# ---------------------------------------------------------------------------- driver
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
                    sys.executable, __file__, "--worker", "--engine", args.engine, "--name", name, "--outdir", str(outdir),
                    "--matchmaking-time", str(args.matchmaking_time), "--rounds", str(args.rounds),
                    "--sizes", *map(str, args.sizes), "--codecs", *args.codecs,
                    "--initial-peers", *bootstrap.visible_maddrs(),
                ]  # fmt: skip
                procs.append(subprocess.Popen(command, start_new_session=True))
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
        failed = [p.args[4] for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            raise SystemExit(f"bench peers failed or timed out: {failed or 'timeout'}")
        time.sleep(POLL_S)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
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
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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

# SPDX-License-Identifier: AGPL-3.0-or-later
"""One peer process of ``bench.averaging``: started as ``python -m bench.averaging --worker`` in its own
process group, it joins the bench's bootstrap DHT, waits for the ``go`` file, runs the rounds and writes
one JSON record per round (``worker``: our all-reduce in peer/averaging; ``hivemind_worker``: hivemind's
DecentralizedAverager, the baseline)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import torch

from lila_run.harness import RawCodec
from peer.averaging import (
    Averager,
    AveragingConfig,
    StaticTokenAuthorizer,
    Transport,
    get_aggregator,
    params_hash,
)

RUN_ID = "bench"
TOKEN = b"bench-token"
WORKER_TIMEOUT_S = 900
POLL_S = 0.05
THREADS = 1


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

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The simulated peers of ``bench.coordinator_load``: asyncio gRPC clients, each with its own channel (its
own TCP connection, as real peers have), run by one client process (:func:`worker`). Each joins, then
every interval (with a random phase) sends a Heartbeat, and every ``lease_every``-th beat also one
lease-cycle call (LeaseShard, then ReportProgress, then CompleteShard on later beats). Latency is measured
client-side around each call, in the window ``t_start`` .. ``t_end``."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time

JOIN_CONCURRENCY = 20
RPC_TIMEOUT_S = 10.0
TOKENS_PER_REPORT = 100


async def _peer(
    stub,
    pb,
    token: str,
    name: str,
    t_start: float,
    t_end: float,
    interval: float,
    lease_every: int,
    latencies: list[float],
    errors: dict[str, int],
    joined: asyncio.Semaphore,
) -> None:
    async with joined:
        response = await stub.Join(pb.JoinRequest(join_token=token, peer_name=name), timeout=RPC_TIMEOUT_S)
    md = (("authorization", f"Bearer {response.session_token}"),)
    seq = response.last_report_seq
    lease = None
    docs = tokens = 0
    beat = random.randrange(lease_every)
    next_at = max(time.time(), t_start - interval) + random.uniform(0, interval)

    async def call(method, request):
        started = time.perf_counter()
        try:
            result = await method(request, metadata=md, timeout=RPC_TIMEOUT_S)
        except Exception as exc:  # counted, not fatal: the benchmark reports errors
            code = getattr(exc, "code", lambda: None)()
            errors[str(code)] = errors.get(str(code), 0) + 1
            return None
        if t_start <= time.time() <= t_end:
            latencies.append((time.perf_counter() - started) * 1000.0)
        return result

    while True:
        await asyncio.sleep(max(0.0, next_at - time.time()))
        if time.time() > t_end:
            return
        next_at += interval
        beat += 1
        await call(stub.Heartbeat, pb.HeartbeatRequest(phase="training"))
        if beat % lease_every:
            continue
        if lease is None:
            got = await call(stub.LeaseShard, pb.LeaseShardRequest())
            if got is not None and got.granted:
                lease = got.lease
                docs, tokens = lease.position.docs_consumed, lease.position.tokens_consumed
        else:
            seq += 1
            size = lease.shard.row_stop - lease.shard.row_start
            tokens += TOKENS_PER_REPORT
            if docs + 1 >= size:
                position = pb.ResumePosition(docs_consumed=size, tokens_consumed=tokens)
                await call(
                    stub.CompleteShard,
                    pb.CompleteShardRequest(lease_id=lease.lease_id, report_seq=seq, position=position),
                )
                lease = None
            else:
                docs += 1
                position = pb.ResumePosition(docs_consumed=docs, tokens_consumed=tokens)
                await call(
                    stub.ReportProgress,
                    pb.ReportProgressRequest(lease_id=lease.lease_id, report_seq=seq, position=position),
                )


def worker(
    address: str,
    token: str,
    first: int,
    count: int,
    t_start: float,
    t_end: float,
    interval: float,
    lease_every: int,
    out: mp.Queue,
) -> None:
    """Run ``count`` simulated peers (named from ``first`` on) until ``t_end``; put their latencies (ms)
    and error counts on ``out``."""
    import grpc

    from lila_net.proto import coordinator_pb2 as pb
    from lila_net.proto import coordinator_pb2_grpc as pb_grpc

    async def main() -> tuple[list[float], dict[str, int]]:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        joined = asyncio.Semaphore(JOIN_CONCURRENCY)
        channels = [grpc.aio.insecure_channel(address) for _ in range(count)]
        try:
            await asyncio.gather(
                *(
                    _peer(
                        pb_grpc.CoordinatorStub(ch),
                        pb,
                        token,
                        f"bench-{first + i}",
                        t_start,
                        t_end,
                        interval,
                        lease_every,
                        latencies,
                        errors,
                        joined,
                    )
                    for i, ch in enumerate(channels)
                )
            )
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))
        return latencies, errors

    out.put(asyncio.run(main()))

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Matchmaking edge cases with several peers inside the test process (each with its own hivemind DHT):
a peer alone, an unauthorized peer that holds the smallest id (it would be elected leader), a late peer,
a peer in client mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lila_net.aggregation import Contribution
from lila_run.harness import RawCodec
from peer.averaging import (
    Averager,
    AveragingConfig,
    RoundResult,
    StaticTokenAuthorizer,
    Transport,
    get_aggregator,
)
from tests.helpers.transports import local_transports

RUN_ID = "inproc"
GOOD = b"good-token"
NUMEL = 999
CONFIG = AveragingConfig(
    matchmaking_time=1.5, join_timeout=1.5, request_timeout=1.0, part_timeout=3.0, result_timeout=3.0
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def transports() -> Iterator[list[Transport]]:
    with local_transports(3) as started:
        yield sorted(started, key=lambda transport: transport.peer_id)


def run_together(jobs: dict[str, Any]) -> dict[str, RoundResult]:
    results: dict[str, RoundResult] = {}
    errors: list[BaseException] = []

    def run(name: str, job: Any) -> None:
        try:
            results[name] = job()
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def average_together(
    round_index: int, peers: dict[str, tuple[Averager, torch.Tensor]]
) -> dict[str, RoundResult]:
    """Every named (averager, vector) averages round ``round_index`` at the same time (fp32, mean)."""
    codec, mean = RawCodec(torch.float32), get_aggregator("mean")
    return run_together({
        name: (lambda averager=averager, vector=vector: averager.average(round_index, vector, codec=codec,
                                                                          aggregator=mean))
        for name, (averager, vector) in peers.items()
    })


def test_alone_intruder_with_smallest_id_late_peer_and_client_mode_peer(
    transports: list[Transport],
) -> None:
    intruder_t, first_t, second_t = transports  # sorted by peer id: the intruder would be elected leader
    authorize = StaticTokenAuthorizer([GOOD])
    first, second = (
        Averager(t, run_id=RUN_ID, credential=GOOD, authorize=authorize, max_numel=NUMEL, config=CONFIG)
        for t in (first_t, second_t)
    )
    intruder = Averager(
        intruder_t,
        run_id=RUN_ID,
        credential=b"forged",
        authorize=lambda *_: True,
        max_numel=NUMEL,
        config=CONFIG,
    )
    codec, mean = RawCodec(torch.float32), get_aggregator("mean")
    vectors = [torch.randn(NUMEL, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]

    # round 0: nobody else shows up -> a group of one, no traffic, the vector comes back as is
    alone = first.average(0, vectors[0], codec=codec, aggregator=mean)
    assert (alone.status, alone.group_size, alone.bytes_sent, alone.bytes_received) == ("alone", 1, 0, 0)
    assert alone.ok and torch.equal(alone.average, vectors[0])

    # round 1: the intruder has the smallest id and leads; the honest peers refuse its answer and regroup
    results = average_together(
        1, {"intruder": (intruder, vectors[0]), "first": (first, vectors[1]), "second": (second, vectors[2])}
    )
    honest = sorted([first_t.peer_id, second_t.peer_id])
    for name in ("first", "second"):
        assert results[name].status == "ok", results[name].reason
        assert list(results[name].group.members) == honest
    assert torch.equal(results["first"].average, results["second"].average)
    torch.testing.assert_close(results["first"].average, (vectors[1] + vectors[2]) / 2, rtol=0, atol=1e-6)
    assert not results["intruder"].ok  # it led a group whose members never sent it anything

    # round 2: two peers average; a third arrives after the group was formed and published: a published
    # group record never makes a peer sit out (anyone may publish one, see peer.averaging.matchmaking), so
    # it elects itself (smallest id), nobody joins within join_timeout, and it is alone with its own vector
    done = average_together(2, {"first": (first, vectors[1]), "second": (second, vectors[2])})
    assert done["first"].ok and done["second"].ok
    late = intruder.average(2, vectors[0], codec=codec, aggregator=mean)
    assert (late.status, late.group_size) == ("alone", 1) and torch.equal(late.average, vectors[0])

    # round 3: a peer in client mode (behind NAT) contributes and receives but owns no part
    client_t = Transport.create(initial_peers=first_t.visible_maddrs(), client_mode=True)
    try:
        client = Averager(
            client_t, run_id=RUN_ID, credential=GOOD, authorize=authorize, max_numel=NUMEL, config=CONFIG
        )
        done = average_together(
            3, {"client": (client, vectors[0]), "first": (first, vectors[1]), "second": (second, vectors[2])}
        )
        for result in done.values():
            assert result.status == "ok", result.reason
            assert list(result.group.members) == sorted([client_t.peer_id, *honest])
            assert list(result.group.owners) == honest
        assert torch.equal(done["client"].average, done["first"].average)
        assert torch.equal(done["client"].average, done["second"].average)
        torch.testing.assert_close(done["client"].average, torch.stack(vectors).mean(0), rtol=0, atol=1e-6)
        client.shutdown()
    finally:
        client_t.shutdown()
    for averager in (first, second, intruder):
        averager.shutdown()


def test_matchmaking_ends_once_every_expected_peer_announced(transports: list[Transport]) -> None:
    """With the round barrier's list of who is coming, a round does not wait the whole matchmaking time;
    a peer told to expect nobody forms its group of one at once. Without the list it waits it out."""
    slow = AveragingConfig(
        matchmaking_time=20.0, join_timeout=1.5, request_timeout=1.0, part_timeout=3.0, result_timeout=3.0
    )
    _, first_t, second_t = transports
    authorize = StaticTokenAuthorizer([GOOD])
    first, second = (
        Averager(t, run_id=RUN_ID, credential=GOOD, authorize=authorize, max_numel=NUMEL, config=slow)
        for t in (first_t, second_t)
    )
    codec, mean = RawCodec(torch.float32), get_aggregator("mean")
    vectors = [torch.full((NUMEL,), float(value)) for value in (1, 3)]
    results = run_together(
        {
            "first": lambda: first.average(
                0, vectors[0], codec=codec, aggregator=mean, expected_peers=[second_t.peer_id]
            ),
            "second": lambda: second.average(
                0, vectors[1], codec=codec, aggregator=mean, expected_peers=[first_t.peer_id]
            ),
        }
    )
    for result in results.values():
        assert result.status == "ok" and result.group_size == 2, result.reason
        assert torch.equal(result.average, torch.full((NUMEL,), 2.0))
        assert result.matchmaking_s < slow.matchmaking_time / 2  # it did not wait out the 20 s
    alone = first.average(1, vectors[0], codec=codec, aggregator=mean, expected_peers=[])
    assert (alone.status, alone.group_size) == ("alone", 1)
    assert alone.matchmaking_s < slow.matchmaking_time / 2


def test_a_retried_round_whose_first_leader_died_still_forms_one_group(transports: list[Transport]) -> None:
    """Round 0 is tried twice. The first time A (smallest id) leads B and C; then A dies. The retry of
    round 0: C starts first and, from the first attempt's announcements, thinks B is coming and asks A
    (dead), then B — which is still in its first attempt's state and answers not_leader. C must ask B
    again rather than lead a group of one next to B's own: two groups of one would both apply round 0 and
    fork the parameters (seen once in a 3-peer network test)."""
    a_t, b_t, c_t = transports
    authorize = StaticTokenAuthorizer([GOOD])
    a, b, c = (Averager(t, run_id=RUN_ID, credential=GOOD, authorize=authorize, max_numel=NUMEL, config=CONFIG)
               for t in (a_t, b_t, c_t))
    codec, mean = RawCodec(torch.float32), get_aggregator("mean")
    vectors = {name: torch.full((NUMEL,), float(value)) for name, value in (("a", 1), ("b", 2), ("c", 6))}
    first = average_together(0, {"a": (a, vectors["a"]), "b": (b, vectors["b"]), "c": (c, vectors["c"])})
    assert {r.group_size for r in first.values()} == {3} and first["a"].group.leader == a_t.peer_id
    a.shutdown()
    a_t.shutdown()

    def b_later() -> RoundResult:
        threading.Event().wait(0.5)  # B is still busy with its first attempt's aftermath
        return b.average(0, vectors["b"], codec=codec, aggregator=mean, expected_peers=[c_t.peer_id])

    retry = run_together({
        "c": lambda: c.average(0, vectors["c"], codec=codec, aggregator=mean, expected_peers=[b_t.peer_id]),
        "b": b_later,
    })
    for name, result in retry.items():
        assert (result.status, result.group_size) == ("ok", 2), (name, result.status, result.reason)
        assert torch.equal(result.average, torch.full((NUMEL,), 4.0))


@pytest.mark.parametrize("rule", ["mean", "centered_clip"])
def test_contributions_count_by_the_tokens_their_peers_trained(transports: list[Transport], rule: str) -> None:
    """Three real peers (1 024, 1 024 and 4 096 tokens trained): every owner weights the contributions to
    its part by the declared tokens, so every peer ends with the same weighted mean, bit for bit."""
    authorize = StaticTokenAuthorizer([GOOD])
    averagers = [Averager(t, run_id=f"{RUN_ID}-weighted-{rule}", credential=GOOD, authorize=authorize,
                          max_numel=NUMEL, config=CONFIG) for t in transports]
    codec, aggregator = RawCodec(torch.float32), get_aggregator(rule)
    values, tokens = (1.0, 2.0, 4.0), (1024, 1024, 4096)
    vectors = [torch.full((NUMEL,), value) for value in values]
    results = run_together({
        str(index): (lambda averager=averager, vector=vector, weight=weight: averager.average(
            0, vector, codec=codec, aggregator=aggregator, weight=weight,
            expected_peers=[t.peer_id for t in transports if t is not averager.transport]))
        for index, (averager, vector, weight) in enumerate(zip(averagers, vectors, tokens, strict=True))
    })
    # weights over their lower median (1 024): 1, 1, 4. The mean by hand: (1 + 2 + 16) / 6. CenteredClip's
    # iterations (checked by hand in tests/unit/net/test_weighted_aggregation.py) run here in-process; the
    # weights must change its result, or they did not travel
    if rule == "mean":
        expected = torch.full((NUMEL,), 19.0 / 6.0)
    else:
        def local(weights: tuple[int, ...]) -> torch.Tensor:
            return aggregator.aggregate([Contribution(str(i), vector, float(weight)) for i, (vector, weight)
                                         in enumerate(zip(vectors, weights, strict=True))], numel=NUMEL).tensor
        expected = local(tokens)
        assert not torch.allclose(expected, local((1, 1, 1)), atol=1e-3)
    averages = [results[str(index)].average for index in range(3)]
    for result in results.values():
        assert result.status == "ok" and result.group_size == 3, result.reason
    assert all(torch.equal(average, averages[0]) for average in averages)
    assert torch.allclose(averages[0], expected, rtol=0, atol=1e-6), averages[0][:4]


def test_sparse_contributions_are_gathered_and_averaged_alike_everywhere(transports: list[Transport]) -> None:
    """Three real peers with the sparse E8 codec (1 % per 512-coordinate chunk, 2 bits) and token weights
    1, 1, 2: each owner answers with the included contributions' own bytes (peer.averaging.gather), so
    every peer ends with the same bits, equal to the weighted mean of what the contributions decode to
    (nothing is quantized twice), non-zero exactly on the union of their kept positions."""
    from lila_codec import get_codec
    from peer.averaging.stats import fp32_round_bytes

    numel = 4096
    authorize = StaticTokenAuthorizer([GOOD])
    averagers = [Averager(t, run_id=f"{RUN_ID}-sparse", credential=GOOD, authorize=authorize,
                          max_numel=numel, config=CONFIG) for t in transports]
    codec, mean = get_codec("sparse-e8", density=0.01, chunk=512, bits=2), get_aggregator("mean")
    base = torch.randn(numel, generator=torch.Generator().manual_seed(99))
    vectors = [base + torch.randn(numel, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    weights = (1.0, 1.0, 2.0)
    results = run_together({
        str(index): (lambda averager=averager, vector=vector, weight=weight: averager.average(
            0, vector, codec=codec, aggregator=mean, want_reconstruction=True, weight=weight,
            expected_peers=[t.peer_id for t in transports if t is not averager.transport]))
        for index, (averager, vector, weight) in enumerate(zip(averagers, vectors, weights, strict=True))
    })
    for result in results.values():
        assert result.status == "ok" and result.group_size == 3, result.reason
    averages = [results[str(index)].average for index in range(3)]
    assert all(torch.equal(average, averages[0]) for average in averages)
    sent = [results[str(index)].reconstruction for index in range(3)]  # what each contribution decodes to
    # 3 parts of ~1 365 coordinates = 3 chunks of 512 each (the last one padded), 8 kept per chunk
    assert [int((s != 0).sum()) for s in sent] == [3 * 3 * 8] * 3
    union = torch.stack(sent).ne(0).any(dim=0)
    assert torch.equal(averages[0] != 0, union)
    expected = (sent[0] + sent[1] + 2 * sent[2]) / 4
    assert torch.allclose(averages[0], expected, rtol=0, atol=1e-6)
    # each peer sent its two other slices and, as an owner, one payload to each of the two others (the
    # caller's own is left out): with frames and credentials still under a fifth of a dense fp32 round
    assert all(r.bytes_sent < fp32_round_bytes(numel, 3) / 5 for r in results.values()), results

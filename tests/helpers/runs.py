# SPDX-License-Identifier: AGPL-3.0-or-later
"""Run configs and diary readers shared by the tests of whole networks (a coordinator and ``lila-peer join``
processes)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lila_net.config import RunConfig
from lila_run.harness import small_run


def robust_run(*, name: str, corpus: str, stage_tokens: int, validation_max_docs: int,
               coordinator: Mapping[str, Any], trust: Mapping[str, Any] | None = None) -> RunConfig:
    """A small run of ``corpus`` (one stage, ``all``) for a few peers that average robustly: fp16
    pseudo-gradients under the centered clip (``trust`` adds to it), groups of at least two (a peer alone
    keeps its work for the next round rather than forking the parameters), rounds of a few seconds,
    shards of two documents with a fifth held out for validation."""
    return small_run(
        name=name,
        sources={"docs": corpus},
        stage={"name": "all", "tokens": stage_tokens},
        schedule={"peak_lr": 3e-3},
        data={"docs_per_shard": 2, "validation_fraction": 0.2, "validation_max_docs": validation_max_docs},
        diloco={"inner_steps": 4, "batch_size": 4, "matchmaking_time_s": 1.5, "averaging_timeout_s": 10.0,
                "min_group_size": 2},
        codec={"name": "fp16"},
        trust={"aggregator": "centered_clip", **(trust or {})},
        coordinator=coordinator,
    )


def hashes_by_step(events: Callable[[int], list[dict[str, Any]]], peers: Iterable[int]
                   ) -> dict[int, dict[int, set[str]]]:
    """outer step -> peer index -> the hashes that peer logged for it (``state`` and ``outer_step`` events of
    ``events(index)``, a peer's diary)."""
    table: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for index in peers:
        for record in events(index):
            if record["event"] in ("state", "outer_step"):
                table[record["outer_step"]][index].add(record["params_sha256"])
    return table


def assert_identical_per_step(table: dict[int, dict[int, set[str]]]) -> None:
    """One hash per outer step across every peer that holds it."""
    for step, per_peer in sorted(table.items()):
        distinct = set().union(*per_peer.values())
        assert len(distinct) == 1, f"outer step {step}: peers hold different parameters: {dict(per_peer)}"


def wait_until(what: str, predicate: Callable[[], Any], *, timeout: float, context: Callable[[], str] = str,
               poll_s: float = 0.05) -> Any:
    """``predicate()``'s first truthy value within ``timeout`` seconds; else an AssertionError naming ``what``
    followed by ``context()`` (e.g. the processes' log tails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")

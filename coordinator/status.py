# SPDX-License-Identifier: AGPL-3.0-or-later
"""The status snapshot: one JSON-ready dict describing the run, rebuilt by a background task.

The status page, ``/api/status``, ``/metrics`` and the GetStatus RPC all serve the latest snapshot,
so a burst of page views never touches the scheduler or the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.splits import latest_comparison
from coordinator.state import LIVE_STATES, CoordinatorState, PeerState, Split
from coordinator.storage import MetricsRow
from coordinator.validation import REACHABILITIES

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0
LEADERBOARD_SIZE = 20
MAX_PEER_ROWS = 500
PEER_TARGET_JOB = "lila-peer"  # the Prometheus job label of peers' metrics targets
UNKNOWN_REACHABILITY = "unknown"  # a live peer that has not said (no metrics yet, or an older client)


@dataclass(frozen=True)
class RunInfo:
    """Static facts about the run shown on the page."""

    name: str
    model_preset: str
    model_variant: str = ""


def _history(rows: Sequence[MetricsRow]) -> list[dict[str, Any]]:
    """Metrics reports averaged per outer step (the chart's points), in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        point = by_step.setdefault(
            row.outer_step,
            {
                "outer_step": row.outer_step,
                "loss_sum": 0.0,
                "n": 0,
                "bpb_sum": 0.0,
                "n_bpb": 0,
                "tokens": 0,
                "t": row.at,
            },
        )
        point["loss_sum"] += row.loss
        point["n"] += 1
        if row.val_bpb is not None:
            point["bpb_sum"] += row.val_bpb
            point["n_bpb"] += 1
        point["tokens"] = max(point["tokens"], row.global_tokens)
        point["t"] = max(point["t"], row.at)
    return [
        {
            "outer_step": step,
            "t": p["t"],
            "global_tokens": p["tokens"],
            "loss": p["loss_sum"] / p["n"],
            "val_bpb": p["bpb_sum"] / p["n_bpb"] if p["n_bpb"] else None,
            "reports": p["n"],
        }
        for step, p in sorted(by_step.items())
    ]


def _split(split: Split | None) -> dict[str, Any] | None:
    if split is None:
        return None
    return {
        "outer_step": split.step,
        "hashes": [{"params_sha256": h, "peers": n} for h, n in split.hashes],
        "groups_of_one": split.groups_of_one,
        "active_peers": split.active_peers,
        "majority_sha256": split.majority,
        "at": split.at,
    }


def model_summary(state: CoordinatorState) -> dict[str, Any]:
    """The model stage trained now (its index, description and parameter count) and the next growth point:
    the next stage that grows the model, the global token count at which it begins, and the outer step
    announced for it (None until its stage begins; a growth announced but not yet applied is the next)."""
    plan = state.plan
    current = plan.stages[min(state.stage_index, len(plan.stages) - 1)]
    steps = state.growth_steps or (-1,) * len(plan.stages)
    applied = [i for i in range(len(plan.stages)) if 0 <= steps[i] <= state.outer_step]
    holding = plan.stages[applied[-1]] if applied else plan.stages[0]
    upcoming = None
    start = 0
    for i, stage in enumerate(plan.stages):
        if plan.grows_at(i) and not 0 <= steps[i] <= state.outer_step:
            upcoming = {"stage_index": i, "stage_name": stage.name, "at_tokens": start,
                        "outer_step": steps[i] if steps[i] >= 0 else None, "model_label": stage.model_label,
                        "model_params": stage.model_params}
            break
        start += stage.token_budget or 0
    return {"stage": holding.model_stage, "label": holding.model_label, "params": holding.model_params,
            "curriculum_model_stage": current.model_stage, "next_growth": upcoming}


def build_snapshot(
    state: CoordinatorState,
    history: Sequence[MetricsRow],
    *,
    run: RunInfo,
    now: float,
    tokens_per_s: float,
) -> dict[str, Any]:
    """The snapshot of ``state`` at ``now`` (pure: no I/O)."""
    plan = state.plan
    leased_by_stage = [0] * len(plan.stages)
    for lease in state.leases.values():
        leased_by_stage[lease.stage] += 1
    queued_by_stage = [0] * len(plan.stages)
    for stage, _ in state.returned:
        queued_by_stage[stage] += 1
    stages = []
    for i, stage in enumerate(plan.stages):
        total = len(stage.shards)
        done = state.stage_completed[i]
        if stage.token_budget:
            progress = min(1.0, state.stage_tokens[i] / stage.token_budget)
        else:
            progress = done / total
        status = "done" if i < state.stage_index else "current" if i == state.stage_index else "pending"
        stages.append(
            {
                "index": i,
                "name": stage.name,
                "status": status,
                "tokens": state.stage_tokens[i],
                "token_budget": stage.token_budget,
                "shards_total": total,
                "shards_completed": done,
                "shards_leased": leased_by_stage[i],
                "shards_queued": queued_by_stage[i],
                "progress": 1.0 if status == "done" else progress,
                "model_stage": stage.model_stage,
                "model_params": stage.model_params,
                "model_label": stage.model_label,
                "growth_step": state.growth_steps[i] if i < len(state.growth_steps) else -1,
            }
        )
    peers_by_state = {s.value: 0 for s in PeerState}
    reachability = {name: 0 for name in (*REACHABILITIES, UNKNOWN_REACHABILITY)}
    peers = []
    for peer in state.peers.values():
        peers_by_state[peer.state.value] += 1
        metrics = peer.metrics
        if peer.state in LIVE_STATES:
            reachability[(metrics.reachability if metrics else "") or UNKNOWN_REACHABILITY] += 1
        peers.append(
            {
                "peer_id": peer.peer_id,
                "name": peer.name,
                "device": " ".join(x for x in (peer.hardware.device_type, peer.hardware.device_name) if x),
                "state": peer.state.value,
                "phase": peer.phase,
                "tokens": peer.tokens,
                "tokens_per_s": metrics.tokens_per_s if metrics and peer.state in LIVE_STATES else 0.0,
                "loss": metrics.loss if metrics else None,
                "outer_step": peer.outer_step,
                "strikes": peer.strikes,
                "last_seen_s": max(0.0, now - peer.last_seen),
                "uplink_bytes_per_s": metrics.uplink_bytes_per_s if metrics else 0.0,
                "downlink_bytes_per_s": metrics.downlink_bytes_per_s if metrics else 0.0,
                "reachability": metrics.reachability if metrics else "",
            }
        )
    peers.sort(key=lambda p: (p["state"] not in ("active", "joining"), -p["tokens"], p["name"]))
    leaderboard = sorted(
        (
            {"peer_id": p["peer_id"], "name": p["name"], "tokens": p["tokens"]}
            for p in peers
            if p["state"] != "banned" and p["tokens"] > 0
        ),
        key=lambda p: (-p["tokens"], p["name"]),
    )[:LEADERBOARD_SIZE]
    banned = [
        {"peer_id": peer.peer_id, "name": peer.name, "reason": peer.ban_reason}
        for peer in state.peers.values()
        if peer.state is PeerState.BANNED
    ]
    points = _history(history)
    latest = points[-1] if points else None
    latest_bpb = next((p["val_bpb"] for p in reversed(points) if p["val_bpb"] is not None), None)
    current = plan.stages[state.stage_index].name if not state.finished else ""
    compared = latest_comparison(state.splits, state.peers)
    return {
        "generated_at": now,
        "run": {"name": run.name, "model_preset": run.model_preset, "model_variant": run.model_variant},
        "finished": state.finished,
        "outer_step": state.outer_step,
        "stage_index": state.stage_index,
        "stage_name": current,
        "stages": stages,
        "model": model_summary(state),
        "global_tokens": state.global_tokens,
        "tokens_per_s": tokens_per_s,
        "reported_tokens_per_s": sum(p["tokens_per_s"] for p in peers),
        "loss": latest["loss"] if latest else None,
        "val_bpb": latest_bpb,
        "peers_by_state": peers_by_state,
        "live_peers_by_reachability": reachability,
        "peer_count": len(peers),
        "peers": peers[:MAX_PEER_ROWS],
        "leases_active": len(state.leases),
        "shards": {
            "total": sum(s["shards_total"] for s in stages),
            "completed": sum(state.stage_completed),
            "leased": len(state.leases),
            "queued": len(state.returned),
        },
        "leaderboard": leaderboard,
        "banned": banned,
        "strikes_total": sum(peer.strikes for peer in state.peers.values()),
        "splits": {
            "count": state.splits.found,
            "latest": _split(state.splits.latest),
            "compared_step": compared.step,
            "distinct_hashes": compared.distinct_hashes,
        },
        "history": points,
    }


def prometheus_targets(state: CoordinatorState) -> list[dict[str, Any]]:
    """Prometheus service-discovery target groups of live peers with a metrics address (the caller's own
    address and the port it declared, see :func:`coordinator.reachability.scrape_target`). Served only on
    ``/api/prometheus-targets``, never on the public page or ``/api/status``: volunteers' addresses stay
    off what anyone can read."""
    return [
        {
            "targets": [peer.metrics_address],
            "labels": {"job": PEER_TARGET_JOB, "peer_id": peer.peer_id, "peer_name": peer.name},
        }
        for peer in sorted(state.peers.values(), key=lambda p: p.peer_id)
        if peer.metrics_address and peer.state in LIVE_STATES
    ]


class StatusBoard:
    """Keeps the latest snapshot and its JSON; ``run()`` refreshes them every ``refresh_s``.

    ``listeners`` are called with each new snapshot (the metrics collector and the page renderer).
    """

    def __init__(
        self,
        *,
        state: Callable[[], CoordinatorState],
        history: Callable[[int], Sequence[MetricsRow]],
        run: RunInfo,
        refresh_s: float,
        history_limit: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._history = history
        self.run_info = run
        self.refresh_s = refresh_s
        self.history_limit = history_limit
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.snapshot: dict[str, Any] = {}
        self.snapshot_json: bytes = b"{}"
        self.targets: list[dict[str, Any]] = []

    def _rate(self, now: float, tokens: int) -> float:
        self._samples.append((now, tokens))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, g0 = self._samples[0]
        return (tokens - g0) / (now - t0) if now > t0 else 0.0

    def refresh(self) -> dict[str, Any]:
        """Rebuild the snapshot now."""
        state = self._state()
        now = self._clock()
        snapshot = build_snapshot(
            state,
            self._history(self.history_limit),
            run=self.run_info,
            now=now,
            tokens_per_s=self._rate(now, state.global_tokens),
        )
        self.snapshot = snapshot
        self.snapshot_json = json.dumps(snapshot, separators=(",", ":")).encode()
        self.targets = prometheus_targets(state)
        for listener in self.listeners:
            listener(snapshot)
        return snapshot

    async def run(self) -> None:
        """Refresh forever in a worker thread (cancel to stop); a failing refresh is logged and retried.

        The thread keeps the event loop answering RPCs while a large snapshot is built (its cost grows
        with the number of peers; ``python -m bench.coordinator_load`` measures RPC latency with many
        peers); the state is immutable, so reading it from another thread is safe, and ``history``
        must be safe to call from that thread (its own database connection).
        """
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                logger.exception("status refresh failed; keeping the previous snapshot")
            await asyncio.sleep(self.refresh_s)

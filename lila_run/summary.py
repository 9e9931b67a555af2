# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a local network did, in a few lines (``lila up`` prints it when the run ends).

Read from the peers' diaries (:mod:`peer.events`) and the coordinator's last status snapshot: the
tokens the ledger credited, validation bits per byte at every evaluation (the seeded θ₀ first, then each
outer step's), the bytes each peer sent in its averaging rounds against what the same rounds would
have sent in fp32, and where the checkpoint and the saved status page are.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peer.events import EVENTS_FILE, iter_events

BYTES_PER_MB = 1e6


@dataclass(frozen=True)
class PeerTraffic:
    """One peer's averaging traffic: rounds it took part in, bytes it sent, bytes fp32 would have sent."""

    name: str
    rounds: int
    bytes_sent: int
    fp32_bytes: int

    @property
    def reduction(self) -> float | None:
        """fp32 bytes / bytes sent (None before a round with another peer)."""
        return self.fp32_bytes / self.bytes_sent if self.bytes_sent and self.fp32_bytes else None


@dataclass(frozen=True)
class RunSummary:
    tokens: int | None  # credited by the coordinator's ledger (None when its status was not read)
    evaluations: tuple[tuple[int, float], ...]  # (outer step, val bpb), ascending steps
    traffic: tuple[PeerTraffic, ...]
    checkpoint: Path | None
    status_page: Path | None
    sample: str | None  # a `lila generate` continuation of the checkpoint

    @property
    def falls_at_every_evaluation(self) -> bool:
        bpbs = [bpb for _, bpb in self.evaluations]
        return len(bpbs) >= 2 and all(b < a for a, b in itertools.pairwise(bpbs))


def evaluations(peer_dirs: Sequence[Path]) -> tuple[tuple[int, float], ...]:
    """Validation bpb per outer step from the diaries (peers holding the same step hold the same
    parameters, so the first peer's figure stands for the step); the θ₀ evaluation is step 0."""
    found: dict[int, float] = {}
    for directory in peer_dirs:
        for record in iter_events(directory / EVENTS_FILE):
            if record["event"] in ("state", "outer_step") and record.get("val_bpb") is not None:
                found.setdefault(int(record["outer_step"]), float(record["val_bpb"]))
    return tuple(sorted(found.items()))


def traffic(peer_dirs: Sequence[Path]) -> tuple[PeerTraffic, ...]:
    """Per peer: the rounds it averaged with at least one other peer, and their bytes."""
    result = []
    for directory in peer_dirs:
        rounds = [r for r in iter_events(directory / EVENTS_FILE, "round") if r.get("group_size", 0) > 1]
        result.append(PeerTraffic(name=directory.name, rounds=len(rounds),
                                  bytes_sent=sum(int(r.get("bytes_sent", 0)) for r in rounds),
                                  fp32_bytes=sum(int(r.get("fp32_bytes", 0)) for r in rounds)))
    return tuple(result)


def format_summary(summary: RunSummary) -> list[str]:
    """The summary as lines for the terminal."""
    lines = ["", "summary"]
    lines.append(f"  tokens       {summary.tokens:,} trained and credited" if summary.tokens is not None
                 else "  tokens       unknown (the coordinator's status could not be read)")
    if summary.evaluations:
        (_, first), (last_step, last) = summary.evaluations[0], summary.evaluations[-1]
        trend = ("falls at every evaluation" if summary.falls_at_every_evaluation
                 else "does not fall at every evaluation")
        lines.append(f"  val bpb      {first:.4f} at the start -> {last:.4f} at outer step {last_step} "
                     f"({trend}: {' '.join(f'{bpb:.3f}' for _, bpb in summary.evaluations)})")
    else:
        lines.append("  val bpb      not evaluated")
    for peer in summary.traffic:
        if peer.reduction is None:
            lines.append(f"  {peer.name:<12} averaged with no other peer")
            continue
        lines.append(f"  {peer.name:<12} sent {peer.bytes_sent / BYTES_PER_MB:.2f} MB in {peer.rounds} rounds; "
                     f"fp32 would have sent {peer.fp32_bytes / BYTES_PER_MB:.2f} MB ({peer.reduction:.1f}x more)")
    if summary.sample is not None:
        lines.append(f"  sample       {summary.sample!r}")
    if summary.checkpoint is not None:
        lines.append(f"  checkpoint   {summary.checkpoint}  (lila eval --checkpoint {summary.checkpoint} / "
                     f"lila generate --checkpoint {summary.checkpoint} --prompt TEXT)")
    else:
        lines.append("  checkpoint   none was written (no outer step finished)")
    lines.append(f"  status page  {summary.status_page} (saved when the run ended)" if summary.status_page
                 else "  status page  not saved (the coordinator did not answer)")
    return lines

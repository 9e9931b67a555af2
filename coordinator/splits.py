# SPDX-License-Identifier: AGPL-3.0-or-later
"""Split detection: after every outer step all peers should hold bitwise-identical parameters; this
notices when they do not (part of the pure core: no I/O, no clock).

With each ``ReportOuterStep`` a peer sends the sha256 of its parameters after that step and how many
peers averaged in the round that produced it. For the last :data:`SPLIT_HISTORY_STEPS` outer steps the
core keeps one report per peer and step (its latest) and, after each report, looks at that step again,
counting only peers that are neither banned nor gone (left):

* the step is **split** when the counted peers reported two or more distinct hashes, or when
  :data:`MIN_GROUPS_OF_ONE` or more of them averaged in a group of one while at least as many peers are
  active — every peer training alone, as in a network where peers cannot reach each other. A step is
  counted once (``SplitWatch.found``); later reports only update ``SplitWatch.latest``.
* peers are counted once per join token (sessions of one token count as one peer);
* the **majority** hash is the one most counted peers reported, once at least two peers reported a hash;
  a tie has no majority: the split is still counted, but nobody is told to re-sync.
* the reporting peer is told to re-sync (``ReportOuterStepResponse.resync``) when a majority exists and
  its own hash differs. A peer that reported before the majority formed learns it at its next report,
  where its parameters still differ.

The history is volatile like the strike tallies: after a coordinator restart it, and the count of
splits, start over.

Tuning: :data:`SPLIT_HISTORY_STEPS` bounds memory (peers × steps reports) and how late a report is still
compared; it only needs to cover the steps peers report out of order. :data:`MIN_GROUPS_OF_ONE` is how
many peers may train alone at one step before it counts as a split: 2 catches the "every peer alone"
failure as soon as two peers show it, while a single peer alone (a lone volunteer, a late joiner) never
counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from coordinator.state import HashReport, PeerRecord, PeerState, Split, SplitWatch

SPLIT_HISTORY_STEPS = 8
MIN_GROUPS_OF_ONE = 2
_GONE = frozenset({PeerState.BANNED, PeerState.LEFT})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one report changed: the step's ``majority`` hash (empty: none), whether the reporter must
    ``resync`` to it, and the split ``found`` when this report made its step split for the first time."""

    majority: str = ""
    resync: bool = False
    found: Split | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """The latest step at which at least two counted peers reported a hash (``step`` -1: none yet) and
    how many distinct hashes they hold there (1: in agreement)."""

    step: int = -1
    distinct_hashes: int = 0


def _counted(reports: Mapping[str, HashReport], peers: Mapping[str, PeerRecord]) -> list[HashReport]:
    """Reports of peers that are still in the run (not banned, not left), one per join token: the report
    of its session with the smallest peer id (sessions of one token never outvote other tokens)."""
    by_token: dict[str, tuple[str, HashReport]] = {}
    for peer_id, report in reports.items():
        peer = peers.get(peer_id)
        if peer is None or peer.state in _GONE:
            continue
        kept = by_token.get(peer.token_key)
        if kept is None or peer_id < kept[0]:
            by_token[peer.token_key] = (peer_id, report)
    return [report for _, report in by_token.values()]


def _hash_counts(reports: list[HashReport]) -> tuple[tuple[str, int], ...]:
    """Each distinct hash with its number of peers, most peers first (ties by hash)."""
    counts = Counter(r.params_sha256 for r in reports if r.params_sha256)
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def majority(hashes: tuple[tuple[str, int], ...]) -> str:
    """The hash held by more peers than any other, when at least two peers reported one; else empty."""
    if not hashes or sum(n for _, n in hashes) < 2:
        return ""
    if len(hashes) > 1 and hashes[1][1] == hashes[0][1]:
        return ""
    return hashes[0][0]


def evaluate(
    step: int, reports: Mapping[str, HashReport], peers: Mapping[str, PeerRecord], *, now: float
) -> Split | None:
    """The split of ``step`` given its ``reports`` and the peers as they are now, or None if it is not split."""
    counted = _counted(reports, peers)
    hashes = _hash_counts(counted)
    alone = sum(1 for r in counted if r.group_size == 1)
    active = sum(1 for p in peers.values() if p.state is PeerState.ACTIVE)
    if len(hashes) < 2 and not (alone >= MIN_GROUPS_OF_ONE and active >= MIN_GROUPS_OF_ONE):
        return None
    return Split(step, hashes, alone, active, majority(hashes), now)


def record(
    watch: SplitWatch,
    peers: Mapping[str, PeerRecord],
    *,
    peer_id: str,
    step: int,
    report: HashReport,
    now: float,
) -> tuple[SplitWatch, Verdict]:
    """Add ``peer_id``'s report for ``step`` (replacing its earlier one for that step) and judge the step.

    A report that carries neither a hash nor a group size, or that is older than the kept history,
    changes nothing and gets an empty verdict."""
    newest = max(watch.steps, default=step)
    if not (report.params_sha256 or report.group_size) or step <= newest - SPLIT_HISTORY_STEPS:
        return watch, Verdict()
    steps = dict(watch.steps)
    steps[step] = MappingProxyType({**steps.get(step, {}), peer_id: report})
    floor = max(newest, step) - SPLIT_HISTORY_STEPS
    for old in [s for s in steps if s <= floor]:
        del steps[old]
    split_steps = frozenset(s for s in watch.split_steps if s > floor)
    split = evaluate(step, steps[step], peers, now=now)
    found, latest, count = None, watch.latest, watch.found
    if split is not None:
        if step not in split_steps:
            found, count, split_steps = split, count + 1, split_steps | {step}
        if latest is None or step >= latest.step:
            latest = split
    top = majority(_hash_counts(_counted(steps[step], peers)))
    verdict = Verdict(top, bool(top and report.params_sha256 and report.params_sha256 != top), found)
    updated = replace(watch, steps=MappingProxyType(steps), split_steps=split_steps, found=count, latest=latest)
    return updated, verdict


def step_majority(watch: SplitWatch, peers: Mapping[str, PeerRecord], step: int) -> str:
    """The majority hash of ``step`` (hex; empty while there is none, or the step is not kept): what
    Join and Heartbeat tell peers a downloaded state of the run's outer step must hash to."""
    reports = watch.steps.get(step)
    return "" if reports is None else majority(_hash_counts(_counted(reports, peers)))


def latest_comparison(watch: SplitWatch, peers: Mapping[str, PeerRecord]) -> Comparison:
    """The newest kept step where at least two counted peers reported a hash (for the status page and
    the ``lila_params_hashes`` gauge)."""
    for step in sorted(watch.steps, reverse=True):
        hashes = _hash_counts(_counted(watch.steps[step], peers))
        if sum(n for _, n in hashes) >= 2:
            return Comparison(step, len(hashes))
    return Comparison()

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Keeping peers on the same outer step: who is coming to a round, and has the network moved on?

Matchmaking only groups the peers that reach a round within ``matchmaking_time`` of each other. Peers
whose inner periods end seconds apart (a joiner, a slower machine, a peer that just re-synced) would
otherwise average alone and fork the global parameters. So before averaging round ``r`` a peer posts a
*ready* marker for ``r`` and waits — at most ``straggler_wait_s`` — until every peer it expects has posted
one too. It expects every state donor (``StateSync`` announcements: every live peer announces its outer
step) that has not passed round ``r`` yet, except peers that said they are *absent*: ``idle`` (no data
for now; refreshed while idle) or ``left`` (stopped cleanly). A donor already at step ``r`` or beyond
means the network moved on without this peer: it must download the state instead of averaging.

Who is believed: a donor announcement is one DHT record any admitted peer can write, so it never sets
the network's step alone. Donors that the coordinator banned (the averaging authorizer's revocation
list) are ignored, and so are donors claiming a step beyond ``max(coordinator's step, floor) + 1``
(:class:`peer.network_view.NetworkView`; ``floor``: the step this peer holds, or the round before the
one it waits for) — logged once per peer and claimed step; a claim far beyond the coordinator's step
(:mod:`lila_net.claims`) is also forwarded, signed by its writer, to the coordinator, which bans the
writer (``report_claim``). A claim that passes is still only a hint:
:mod:`peer.sync` loads a state only when its bytes hash to the trusted hash of its step.

In its first round after it started, a peer also waits until as many peers are ready as the coordinator
counts taking part (``HeartbeatResponse.peers_taking_part``: live sessions not idle), so that peers
starting together (a run's start, a NAT'd peer one dial-back timeout later) average the first round
together instead of one averaging it alone and the others re-syncing.

The first peer to stop waiting releases everyone: it re-posts its marker with ``go`` and a peer still
waiting at that round leaves as soon as it sees one. Without this, peers whose conditions differ (one read
the coordinator's count before the NAT'd peers joined, another after) leave seconds apart; the first then
meets nobody within ``matchmaking_time`` and forks the run's parameters by averaging alone.

Tuning ``straggler_wait_s``: it should cover the spread of the peers' inner-period times plus one state
download, so that a peer that re-synced still makes the next round. Too short and slow peers keep
missing rounds (they re-sync every time and never contribute); too long and a peer that died silently
holds everyone up for that long, once per round, until its donor announcement expires (three announce
periods).

DHT keys (besides the averaging layer's, see ``lila_net.dht.keys``):
``lila/{run}/ready/{round}`` (subkey peer id, value ``{"v": 1}``) and ``lila/{run}/absent`` (subkey peer id,
value ``{"why": "idle" | "left"}``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from lila_net.claims import is_false_claim
from lila_net.dht.evidence import SignedRecord
from lila_net.dht.keys import absent_key, ready_key
from lila_net.dht.records import MAX_MARKER_BYTES

from .averaging.matchmaking import revoked_ids
from .averaging.state_sync import Donor, StateSync
from .averaging.transport import Transport
from .network_view import NetworkView

logger = logging.getLogger(__name__)

POLL_S = 0.25
READY_TTL_ROUNDS = 4  # a ready marker outlives this many straggler waits
LEFT_TTL_S = 600.0
DHT_CALL_TIMEOUT_S = 10.0
ABSENT_REASONS = ("idle", "left")


def believed(donors: Iterable[Donor], *, view_step: int, floor: int = -1,
             banned: Collection[str] = frozenset()) -> list[Donor]:
    """The announced ``donors`` a peer believes, in their order: not ``banned`` (libp2p ids the coordinator
    revoked) and, once the coordinator said a step (``view_step`` >= 0; -1: unknown, no bound), claiming at
    most ``max(view_step, floor) + 1`` (module docstring). Pure: :meth:`RoundSync.donors` and the
    poisoned-peer benchmark (``bench.robust``) both decide with it."""
    bound = max(view_step, floor) + 1 if view_step >= 0 else None
    return [donor for donor in donors
            if donor.peer_id not in banned and (bound is None or donor.outer_step <= bound)]


def false_claims(donors: Iterable[Donor], *, view_step: int) -> list[Donor]:
    """The announced ``donors`` whose claim is false against the coordinator's step ``view_step`` (-1:
    unknown, none is): what a peer forwards to the coordinator (:mod:`lila_net.claims`). Pure, like
    :func:`believed`; ``bench.robust`` decides with it too."""
    return [donor for donor in donors if view_step >= 0 and is_false_claim(donor.outer_step, view_step)]


def moved_on(donors: Iterable[Donor], round_index: int) -> int | None:
    """The highest outer step among (believed) ``donors`` when it is ``>= round_index``: the network
    finished round ``round_index`` without this peer, which must download the state instead of averaging
    (:attr:`BarrierResult.moved_on`); None otherwise."""
    ahead = [donor.outer_step for donor in donors if donor.outer_step >= round_index]
    return max(ahead) if ahead else None


@dataclass(frozen=True)
class BarrierResult:
    """How the wait for round ``round_index`` ended.

    ``moved_on``: the highest outer step a donor announced when it is ``>= round_index`` (re-sync instead
    of averaging), else None. ``missing``: expected peers that had not arrived when the wait ended."""

    round_index: int
    waited_s: float
    expected: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    moved_on: int | None = None
    known: bool = True  # False when the barrier could not see the others (DHT trouble, markers refused)

    @property
    def arrived(self) -> frozenset[str] | None:
        """The expected peers that reached the round (matchmaking waits only for them); None if unknown."""
        return frozenset(self.expected) - frozenset(self.missing) if self.known else None


@dataclass
class RoundSync:
    """Ready markers, absence records and the network's outer step for one peer of one run."""

    transport: Transport
    state_sync: StateSync
    run_id: str
    straggler_wait_s: float
    idle_ttl_s: float = 5.0
    enabled: bool = True  # False once the DHT refused a ready marker (then only the moved-on check runs)
    view: NetworkView = field(default_factory=NetworkView)  # the coordinator's step (unknown: no bound)
    report_claim: Callable[[SignedRecord], None] | None = None  # forwards a false claim's signed record
    _ignored: set[tuple[str, int]] = field(default_factory=set, repr=False)  # (peer, step) already logged
    _waits: int = field(default=0, repr=False)  # barriers waited so far (the first also waits for starters)

    def __post_init__(self) -> None:
        if self.straggler_wait_s < 0 or self.idle_ttl_s <= 0:
            raise ValueError(f"straggler_wait_s={self.straggler_wait_s} must be >= 0 and "
                             f"idle_ttl_s={self.idle_ttl_s} > 0")

    @property
    def me(self) -> str:
        return self.transport.peer_id

    # ------------------------------------------------------------------ the network's step
    def donors(self, floor: int = -1) -> list[Donor]:
        """Other peers announcing a state, highest outer step first, without banned peers and without
        claims beyond ``max(coordinator's step, floor) + 1`` (:func:`believed`)."""
        banned = revoked_ids(self.state_sync.endpoint.authorize)
        announced = self.state_sync.find_donors()
        out = believed(announced, view_step=self.view.step, floor=floor, banned=banned)
        false = {donor.peer_id for donor in false_claims(announced, view_step=self.view.step)}
        for donor in announced:
            if donor in out or donor.peer_id in banned or (donor.peer_id, donor.outer_step) in self._ignored:
                continue
            self._ignored.add((donor.peer_id, donor.outer_step))
            logger.warning("ignoring donor %s: it claims outer step %d, but the coordinator's step is "
                           "%d (at most one round ahead is believed)", donor.peer_id, donor.outer_step,
                           self.view.step)
            if donor.peer_id in false and self.report_claim is not None and donor.record is not None:
                self._forward(donor)
        return out

    def _forward(self, donor: Donor) -> None:
        """Send ``donor``'s signed announcement to the coordinator, which bans a false claim's writer
        (:mod:`lila_net.claims`). Failures are logged: accountability must not stop training."""
        try:
            self.report_claim(donor.record)
        except Exception as exc:
            logger.warning("could not report the false claim of %s (outer step %d): %s", donor.peer_id,
                           donor.outer_step, exc)

    def network_step(self, floor: int = -1) -> int:
        """The highest outer step another (believed) peer announces (-1 when nobody does)."""
        donors = self.donors(floor)
        return donors[0].outer_step if donors else -1

    # ------------------------------------------------------------------ markers
    def post_ready(self, round_index: int, *, go: bool = False) -> bool:
        """Say this peer reached round ``round_index`` (with ``go``: and stopped waiting, so the others
        waiting at that round follow); False when the DHT refused the record."""
        expiration = self.transport.now() + READY_TTL_ROUNDS * max(self.straggler_wait_s, self.idle_ttl_s)
        value = {"v": 1, "go": True} if go else {"v": 1}
        return self._store(ready_key(self.run_id, round_index), value, expiration)

    def ready(self, round_index: int) -> dict[str, bool]:
        """Peers that reached ``round_index``: peer id -> whether it stopped waiting (``go``)."""
        out: dict[str, bool] = {}
        for peer, value in self._subkeys(ready_key(self.run_id, round_index)).items():
            try:
                record = json.loads(value.decode())
            except ValueError:
                continue
            if isinstance(record, dict):
                out[peer] = record.get("go") is True
        return out

    def post_absent(self, why: str, *, timeout: float = DHT_CALL_TIMEOUT_S) -> bool:
        """Tell the others not to wait for this peer: ``idle`` (re-post while idle) or ``left``."""
        if why not in ABSENT_REASONS:
            raise ValueError(f"absence {why!r}: use one of {ABSENT_REASONS}")
        ttl = LEFT_TTL_S if why == "left" else self.idle_ttl_s
        return self._store(absent_key(self.run_id), {"why": why}, self.transport.now() + ttl, timeout=timeout)

    def _store(self, key: str, value: dict, expiration: float, *, timeout: float = DHT_CALL_TIMEOUT_S) -> bool:
        payload = json.dumps(value, separators=(",", ":")).encode()
        return self.transport.run(self.transport.dht_store(key, self.me, payload, expiration), timeout=timeout)

    def _subkeys(self, key: str) -> dict[str, bytes]:
        records = self.transport.run(self.transport.dht_get_subkeys(key), timeout=DHT_CALL_TIMEOUT_S)
        return {peer: value for peer, value in records.items() if len(value) <= MAX_MARKER_BYTES}

    def absences(self) -> dict[str, str]:
        """Peers that said they are idle or gone: peer id -> ``idle`` | ``left``."""
        out: dict[str, str] = {}
        for peer, value in self._subkeys(absent_key(self.run_id)).items():
            try:
                why = json.loads(value.decode()).get("why")
            except (ValueError, AttributeError):
                continue
            if why in ABSENT_REASONS:
                out[peer] = why
        return out

    def absent(self) -> set[str]:
        """Peers that said they are idle or gone."""
        return set(self.absences())

    def working(self) -> list[Donor]:
        """Other live peers that did not say they are idle or gone (they may still average a round)."""
        donors = self.donors()
        if not donors:
            return []
        absent = self.absent()
        return [donor for donor in donors if donor.peer_id not in absent and donor.peer_id != self.me]

    def staying(self) -> tuple[list[Donor], list[Donor]]:
        """Other live peers that did not say they left: ``(working, idle)``. Both may still need this peer —
        the working ones to average with, the idle ones (when behind) to download the state from."""
        donors = [donor for donor in self.donors() if donor.peer_id != self.me]
        if not donors:
            return [], []
        absences = self.absences()
        working = [donor for donor in donors if donor.peer_id not in absences]
        idle = [donor for donor in donors if absences.get(donor.peer_id) == "idle"]
        return working, idle

    # ------------------------------------------------------------------ the barrier
    def wait_for_peers(self, round_index: int, *, stop: threading.Event | None = None) -> BarrierResult:
        """Post ready for ``round_index`` and wait for the expected peers (see the module docstring)."""
        started = time.monotonic()
        deadline = started + self.straggler_wait_s
        if not self.post_ready(round_index) and self.enabled:
            # e.g. DHT nodes whose record schema does not know the ready key: the others cannot see
            # anyone's marker either, so waiting would only cost every round the full straggler time
            self.enabled = False
            logger.warning("the DHT refused the round-%d ready marker: not waiting for stragglers from now on "
                           "(peers that drift apart re-sync instead)", round_index)
        if not self.enabled:
            deadline = started
        first, self._waits = self._waits == 0, self._waits + 1
        expected: set[str] = set()
        missing: set[str] = set()
        while True:
            donors = self.donors(round_index - 1)
            ahead = moved_on(donors, round_index)
            if ahead is not None:
                return BarrierResult(round_index, time.monotonic() - started, tuple(sorted(expected)),
                                     moved_on=ahead)
            absent = self.absent()
            expected = {donor.peer_id for donor in donors} - absent - {self.me}
            ready = self.ready(round_index)
            arrived = set(ready)
            missing = expected - arrived
            # this peer's first round: also wait for peers the coordinator counts but the DHT does not show yet
            starting = first and len(arrived - {self.me}) + 1 < self.view.taking_part
            going = any(go for peer, go in ready.items() if peer != self.me)  # another one went: follow it
            now = time.monotonic()
            if (not missing and not starting) or going or now >= deadline or (stop is not None and stop.is_set()):
                break
            if stop is not None:
                stop.wait(min(POLL_S, deadline - now))
            else:
                time.sleep(min(POLL_S, deadline - now))
        waited = time.monotonic() - started
        if self.enabled and not (stop is not None and stop.is_set()):
            self.post_ready(round_index, go=True)
        if missing and self.enabled:
            logger.info("round %d: %d expected peers did not arrive within %.1f s: %s", round_index,
                        len(missing), self.straggler_wait_s, sorted(missing))
        return BarrierResult(round_index, waited, tuple(sorted(expected)), tuple(sorted(missing)),
                             known=self.enabled)

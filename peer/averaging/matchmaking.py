# SPDX-License-Identifier: AGPL-3.0-or-later
"""Who averages with whom in round k: DHT announcements, a deterministic leader, authorized joins.

For round ``k`` every peer:

1. announces itself under ``lila/{run}/avg/{k}/peers`` (subkey = its peer id, with an expiration);
2. waits ``matchmaking_time`` — or only until every peer it expects (the round barrier's list) has
   announced — then reads the announced candidates;
3. elects the smallest candidate id among the directly reachable ones as leader — or, when no candidate is
   directly reachable, among the relayed ones (behind a NAT, reached through a circuit relay); client-mode
   peers never lead. Members as reachable as the leader or better own the parts, so a relayed peer owns a
   part only in a round without a direct peer (each of its bytes crosses the relay's link twice). The leader keeps its group open until every candidate it
   saw has joined or ``join_timeout`` passes, fixes the member list (sorted ids, at most ``max_group_size``),
   answers every joiner with it and publishes it. The others send a JOIN request (with their credential)
   to the leader and adopt the list it answers (carrying the leader's credential, checked too).
   A leader that refuses, is unreachable or unauthorized is dropped and the next smallest candidate is
   tried (``max_leader_attempts``), so an intruder or a dead peer with the smallest id cannot stall a round.
   A leader that answers *not leader* is asked again until ``matchmaking_time + join_timeout`` after the
   start: in a retried round it may still hold its previous attempt's state, and passing over a live
   leader would make two groups of one that both apply the round.
   A peer whose leader says the group is closed or full sits the round out and reports why.

A group of one (nobody else announced or joined) is a valid outcome: the caller skips communication.

A group is never published to the DHT: any admitted peer could publish one naming only itself for any
round, so no reader could trust it (issue 16). Who averaged a round is known to its members (the
averaging result) and to the coordinator (each peer's ``ReportOuterStep`` names its group). Candidates
the coordinator banned (the authorizer's revocation list, :func:`revoked_ids`) are dropped before the
leader election.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lila_net.credentials import PEER_ID_PATTERN
from lila_net.dht.keys import announce_key, check_run_id, protocol
from lila_net.dht.records import (
    GROUP_ID_BYTES,
    GROUP_ID_PATTERN,
    MAX_ANNOUNCEMENT_BYTES,
)
from peer.averaging.config import AveragingConfig
from peer.averaging.rpc import Endpoint, Refused, Reply, call, serve
from peer.averaging.stats import ByteCounter
from peer.averaging.wire import Limits, RemoteError, WireError, require

logger = logging.getLogger(__name__)

MAX_ROUNDS_IN_FLIGHT = 8
NOT_LEADER_RETRY_S = 0.1  # how soon a peer asks again a leader that answered not_leader (see form_group)
EXPECTED_POLL_S = 0.05  # how often a peer that knows who is coming looks whether they all announced

ERR_NOT_LEADER = "not_leader"
ERR_CLOSED = "group_closed"
ERR_FULL = "group_full"
ERR_NOT_READY = "not_ready"
ERR_BUSY = "busy"
ERR_WRONG_RUN = "wrong_run"


def is_peer_id(value: Any) -> bool:
    return isinstance(value, str) and bool(PEER_ID_PATTERN.match(value))


def revoked_ids(authorize: Any) -> frozenset[str]:
    """The libp2p ids an averaging authorizer refuses as banned (a ``CredentialAuthorizer``'s verifier's
    revocation list, updated from the coordinator); empty for authorizers without one (static tokens)."""
    return frozenset(getattr(getattr(authorize, "verifier", None), "revoked", ()))


@dataclass(frozen=True)
class Group:
    """The fixed member list of one round.

    ``members`` (sorted peer ids) all contribute and receive the average; ``owners`` (the members that
    accept incoming streams, i.e. not in client mode; sorted) own the parts: part ``j`` is ``owners[j]``'s.
    """

    round_index: int
    group_id: str
    leader: str
    members: tuple[str, ...]
    owners: tuple[str, ...]

    def index_of(self, peer_id: str) -> int:
        return self.members.index(peer_id)

    def part_of(self, peer_id: str) -> int | None:
        """The part ``peer_id`` owns, or None for a client-mode member."""
        return self.owners.index(peer_id) if peer_id in self.owners else None

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round_index,
            "group_id": self.group_id,
            "leader": self.leader,
            "members": list(self.members),
            "owners": list(self.owners),
        }


def parse_group(header: dict[str, Any], *, round_index: int, max_group_size: int) -> Group:
    """Validate a group record/reply; raises WireError naming the bad field."""
    if require(header, "round", int) != round_index:
        raise WireError(f"group is for round {header['round']}, expected {round_index}")
    group_id = require(header, "group_id", str)
    if not GROUP_ID_PATTERN.match(group_id):
        raise WireError(f"group_id {group_id[:40]!r} is not {2 * GROUP_ID_BYTES} lowercase hex digits")
    leader = require(header, "leader", str)
    members = require(header, "members", list)
    if not 1 <= len(members) <= max_group_size:
        raise WireError(f"group has {len(members)} members, allowed 1..{max_group_size}")
    if not all(is_peer_id(member) for member in members):
        raise WireError("group members must be base58 peer ids")
    if members != sorted(set(members)):
        raise WireError("group members must be sorted and unique")
    if leader not in members:
        raise WireError("group leader is not among its members")
    owners = require(header, "owners", list)
    if not owners or owners != sorted(set(owners)) or not set(owners) <= set(members):
        raise WireError("group owners must be a sorted, unique, non-empty subset of the members")
    if leader not in owners:
        raise WireError("group leader is not among its owners")
    return Group(round_index, group_id, leader, tuple(members), tuple(owners))


DIRECT, RELAYED, CLIENT = 0, 1, 2  # how a peer is reached, best first (see the module docstring, step 4)


def reach_rank(*, client: bool, relayed: bool) -> int:
    """``DIRECT``, ``RELAYED`` (only through a circuit relay) or ``CLIENT`` (never: only outgoing streams)."""
    return RELAYED if relayed else CLIENT if client else DIRECT


def elect_leader(candidates: Mapping[str, int], *, excluded: Collection[str] = frozenset()) -> str | None:
    """The leader of a round among the announced ``candidates`` (peer id -> reach rank, banned ones
    already dropped): the smallest id of the best reach rank below ``CLIENT``, skipping ``excluded``
    (leaders that failed); None when none is left (the peer sits the round out). Group records play no
    part. Pure: :meth:`Matchmaker.form_group` and the poisoned-peer benchmark (``bench.robust``) use it."""
    leaders = [(rank, peer) for peer, rank in candidates.items() if rank < CLIENT and peer not in excluded]
    return min(leaders)[1] if leaders else None


def announcement(client: bool, relayed: bool = False) -> bytes:
    """DHT value announcing a peer for a round (``client``: it cannot accept direct incoming streams;
    ``relayed``: it accepts them through a relay)."""
    return json.dumps({"v": 1, "client": client, "relayed": relayed}, separators=(",", ":")).encode()


def parse_announcements(records: dict[str, bytes]) -> dict[str, int]:
    """``peer id -> reach rank`` of the well-formed announcements; the others are ignored."""
    candidates = {}
    for peer, value in records.items():
        if not is_peer_id(peer) or len(value) > MAX_ANNOUNCEMENT_BYTES:
            continue
        try:
            parsed = json.loads(value.decode())
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("client"), bool):
            candidates[peer] = reach_rank(client=parsed["client"], relayed=parsed.get("relayed") is True)
    return candidates


class SlotState(Enum):
    PENDING = "pending"  # not decided yet (waiting, or trying to join a leader)
    LEADING = "leading"  # this peer leads and accepts joiners
    FIXED = "fixed"  # this peer led and its group is fixed
    FOLLOWING = "following"  # this peer joined another leader's group
    FAILED = "failed"  # this peer sits the round out


@dataclass
class _Slot:
    counter: ByteCounter
    condition: asyncio.Condition = field(default_factory=asyncio.Condition)
    state: SlotState = SlotState.PENDING
    expected: set[str] = field(default_factory=set)
    joiners: dict[str, int] = field(default_factory=dict)  # peer id -> reach rank
    all_joined: asyncio.Event = field(default_factory=asyncio.Event)
    group: asyncio.Future | None = None

    async def set_state(self, state: SlotState) -> None:
        async with self.condition:
            self.state = state
            self.condition.notify_all()


@dataclass(frozen=True)
class MatchOutcome:
    """``group`` is None when this peer sits the round out; ``reason`` says why or how the group formed
    ("led", "joined", "alone", or a sentence for a sit-out)."""

    group: Group | None
    reason: str


class Matchmaker:
    """Forms the group of each round; one per peer and run. Call :meth:`start` once on the loop."""

    def __init__(self, endpoint: Endpoint, *, run_id: str, config: AveragingConfig) -> None:
        self.endpoint = endpoint
        self.run_id = check_run_id(run_id)
        self.config = config
        self._slots: dict[int, _Slot] = {}

    @property
    def me(self) -> str:
        return self.endpoint.transport.peer_id

    async def start(self) -> None:
        limits = Limits(self.config.max_credential_bytes, self.config.max_header_bytes, 0)
        await serve(self.endpoint, protocol(self.run_id, "join"), self._on_join, limits=limits)

    def _slot(self, round_index: int, counter: ByteCounter | None) -> _Slot | None:
        slot = self._slots.get(round_index)
        if slot is not None and counter is not None and slot.state is not SlotState.PENDING:
            slot = None  # a new attempt at a round this peer already went through
        if slot is None:
            if counter is None and len(self._slots) >= MAX_ROUNDS_IN_FLIGHT:
                return None  # a joiner asks about a round we have not reached and we track enough already
            while len(self._slots) >= MAX_ROUNDS_IN_FLIGHT:
                del self._slots[min(self._slots)]
            slot = _Slot(counter=counter or ByteCounter())
            slot.group = asyncio.get_running_loop().create_future()
            self._slots[round_index] = slot
        elif counter is not None:
            counter.add(slot.counter.received, slot.counter.sent)  # bytes counted before we reached the round
            slot.counter = counter
        return slot

    def forget_before(self, round_index: int) -> None:
        """Drop the state of rounds older than ``round_index``."""
        for old in [k for k in self._slots if k < round_index]:
            del self._slots[old]

    @property
    def _join_wait(self) -> float:
        """Longest time a leader may take to answer a join: its own wait plus its failed attempts."""
        cfg = self.config
        return cfg.matchmaking_time + (cfg.max_leader_attempts + 1) * (cfg.join_timeout + cfg.request_timeout)

    # ------------------------------------------------------------------ member/leader side
    async def form_group(
        self, round_index: int, counter: ByteCounter, *, expected: frozenset[str] | None = None
    ) -> MatchOutcome:
        """The group of round ``round_index`` (see the module docstring).

        ``expected``: the other peers this one knows are coming (the round barrier's); once all of them
        have announced, the wait for more candidates ends early instead of lasting ``matchmaking_time``.
        None waits the whole ``matchmaking_time``.
        """
        cfg, transport, me = self.config, self.endpoint.transport, self.me
        loop = asyncio.get_running_loop()
        slot = self._slot(round_index, counter)
        assert slot is not None
        started = loop.time()
        expiration = transport.now() + self._join_wait + cfg.join_timeout
        client, relayed = transport.client_mode, transport.relayed
        key = announce_key(self.run_id, round_index)
        await transport.dht_store(key, me, announcement(client, relayed), expiration)
        candidates = await self._candidates(key, deadline=started + cfg.matchmaking_time, expected=expected)
        candidates[me] = reach_rank(client=client, relayed=relayed)
        excluded: set[str] = set()
        # A leader that answers not_leader may still be in an earlier attempt at this round (a retried
        # round: its old state answers until it starts the new attempt): ask it again until this deadline
        # rather than passing it over — passing over a live leader can make two groups of one.
        patience = started + cfg.matchmaking_time + cfg.join_timeout
        attempt = 0
        while attempt < cfg.max_leader_attempts:
            leader = elect_leader(candidates, excluded=excluded)
            if leader is None:
                await slot.set_state(SlotState.FAILED)
                return MatchOutcome(None, "no reachable leader: every candidate is in client mode or failed")
            if leader == me:
                group = await self._lead(round_index, slot, expected=set(candidates) - excluded - {me})
                return MatchOutcome(group, "alone" if len(group.members) == 1 else "led")
            try:
                result = await call(
                    self.endpoint,
                    leader,
                    protocol(self.run_id, "join"),
                    header={"run": self.run_id, "round": round_index, "client": client, "relayed": relayed},
                    timeout=self._join_wait,
                )
                counter.add(result.bytes_received, result.bytes_sent)
                group = parse_group(
                    result.frame.header, round_index=round_index, max_group_size=cfg.max_group_size
                )
                if group.leader != leader or me not in group.members:
                    raise WireError("the leader answered a group that does not contain it or us")
            except RemoteError as error:
                if error.code in (ERR_CLOSED, ERR_FULL):
                    await slot.set_state(SlotState.FAILED)
                    return MatchOutcome(None, f"leader {leader} refused to admit us: {error.code}")
                if error.code == ERR_NOT_LEADER and loop.time() < patience:
                    await asyncio.sleep(NOT_LEADER_RETRY_S)
                    continue
                logger.info(
                    "round %d: leader %s answered %s; trying the next one", round_index, leader, error.code
                )
                excluded.add(leader)
                attempt += 1
            except asyncio.CancelledError:
                raise
            except Exception as error:  # timeout, vanished peer, refused credential, malformed reply
                logger.info(
                    "round %d: leader %s failed (attempt %d): %r", round_index, leader, attempt + 1, error
                )
                excluded.add(leader)
                attempt += 1
            else:
                if not slot.group.done():
                    slot.group.set_result(group)
                await slot.set_state(SlotState.FOLLOWING)
                return MatchOutcome(group, "joined")
        await slot.set_state(SlotState.FAILED)
        return MatchOutcome(None, f"no leader admitted us after {cfg.max_leader_attempts} attempts")

    async def _candidates(
        self, key: str, *, deadline: float, expected: frozenset[str] | None
    ) -> dict[str, bool]:
        """The announced candidates (banned ones dropped) at ``deadline``, or as soon as every ``expected``
        peer announced."""
        loop = asyncio.get_running_loop()
        if expected is None:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return self._allowed(parse_announcements(await self.endpoint.transport.dht_get_subkeys(key)))
        while True:
            candidates = self._allowed(parse_announcements(await self.endpoint.transport.dht_get_subkeys(key)))
            remaining = deadline - loop.time()
            if expected <= candidates.keys() or remaining <= 0:
                return candidates
            await asyncio.sleep(min(EXPECTED_POLL_S, remaining))

    def _allowed(self, candidates: dict[str, int]) -> dict[str, int]:
        banned = revoked_ids(self.endpoint.authorize)
        return {peer: rank for peer, rank in candidates.items() if peer not in banned}

    async def _lead(self, round_index: int, slot: _Slot, *, expected: set[str]) -> Group:
        slot.expected = expected
        if expected.issubset(slot.joiners):
            slot.all_joined.set()
        await slot.set_state(SlotState.LEADING)
        if expected:
            try:
                await asyncio.wait_for(slot.all_joined.wait(), timeout=self.config.join_timeout)
            except asyncio.TimeoutError:
                missing = sorted(expected - set(slot.joiners))
                logger.info(
                    "round %d: fixing the group without %d announced peers: %s",
                    round_index,
                    len(missing),
                    missing,
                )
        admitted = sorted(slot.joiners)[: self.config.max_group_size - 1]
        members = tuple(sorted([self.me, *admitted]))
        mine = reach_rank(client=self.endpoint.transport.client_mode, relayed=self.endpoint.transport.relayed)
        owners = tuple(peer for peer in members if peer == self.me or slot.joiners[peer] <= mine)
        group = Group(round_index, secrets.token_hex(GROUP_ID_BYTES), self.me, members, owners)
        slot.group.set_result(group)
        await slot.set_state(SlotState.FIXED)
        return group

    # ------------------------------------------------------------------ leader side handler
    async def _on_join(self, peer_id: str, frame: Any) -> Reply:
        if require(frame.header, "run", str) != self.run_id:
            raise Refused(ERR_WRONG_RUN, f"this peer averages run {self.run_id!r}")
        round_index = require(frame.header, "round", int)
        if round_index < 0:
            raise WireError("round must be >= 0")
        joiner_rank = reach_rank(client=require(frame.header, "client", bool),
                                 relayed=frame.header.get("relayed") is True)
        slot = self._slot(round_index, None)
        if slot is None:
            raise Refused(ERR_BUSY, "too many rounds in flight")
        slot.counter.add(frame.wire_bytes, 0)
        try:
            async with slot.condition:
                await asyncio.wait_for(
                    slot.condition.wait_for(lambda: slot.state is not SlotState.PENDING),
                    timeout=self._join_wait,
                )
        except asyncio.TimeoutError:
            raise Refused(ERR_NOT_READY, f"this peer has not reached round {round_index}") from None
        if slot.state is SlotState.LEADING:
            slot.joiners[peer_id] = joiner_rank
            if slot.expected.issubset(slot.joiners):
                slot.all_joined.set()
            group = await asyncio.shield(slot.group)
            if peer_id not in group.members:
                raise Refused(ERR_FULL, f"the group is full ({self.config.max_group_size} members)")
            return Reply(header=group.to_json(), account=lambda received, sent: slot.counter.add(0, sent))
        if slot.state is SlotState.FIXED:
            raise Refused(ERR_CLOSED, f"the group of round {round_index} is already fixed")
        raise Refused(ERR_NOT_LEADER, f"this peer does not lead round {round_index}")

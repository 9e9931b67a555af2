# SPDX-License-Identifier: AGPL-3.0-or-later
"""Reduce-scatter + all-gather of one flat float32 vector within a fixed group (butterfly all-reduce).

The vector is split into ``len(group.owners)`` contiguous parts; owner ``j`` (sorted peer ids of the
members that accept streams) owns part ``j``.
Every member encodes its slice of part ``j`` with the codec and sends it to owner ``j`` on one stream;
the owner decodes what arrives before ``part_timeout``, aggregates it (its own contribution went through
the same encode/decode), encodes the aggregate ONCE and answers every contributor on the same stream
with those bytes (a sparse codec's owner answers with the included contributions' own bytes instead, and
every member combines them alike: :mod:`peer.averaging.gather`). Every member, the owner too, decodes the same bytes, so all members end with
bitwise-identical averages. A contributor that misses the deadline is dropped for that part (and still
gets the result if it is listening); an owner that vanishes leaves its part missing (NaN), reported in
``failed_parts`` — the caller decides whether to skip the outer step or re-sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lila_codec import wire as lila_wire
from lila_net.aggregation import (
    REASON_UNDECODABLE,
    Aggregator,
    Contribution,
    Rejection,
)
from lila_net.dht.keys import protocol
from peer.averaging.config import AveragingConfig
from peer.averaging.gather import GATHER_KEY, Gathered, combine, gathers, pack, unpack
from peer.averaging.matchmaking import Group, is_peer_id
from peer.averaging.rpc import Endpoint, Refused, Reply, call
from peer.averaging.stats import ByteCounter
from peer.averaging.wire import Frame, Limits, RemoteError, WireError, require

logger = logging.getLogger(__name__)

SEED_MODULUS = 2**31
ERR_PART_FAILED = "part_failed"
ERR_WRONG_PART = "wrong_part"
ERR_DUPLICATE = "duplicate"


class Codec(Protocol):
    """What the averaging layer needs of a codec (``lila_codec.get_codec(name, **options)`` fits)."""

    def encode(self, tensor: torch.Tensor, *, seed: int = 0) -> bytes: ...

    def decode(self, payload: bytes) -> torch.Tensor: ...


def part_bounds(numel: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(numel)`` into ``parts`` contiguous ranges whose sizes differ by at most one."""
    if parts < 1 or numel < 0:
        raise ValueError(f"cannot split {numel} values into {parts} parts")
    base, extra = divmod(numel, parts)
    bounds, start = [], 0
    for index in range(parts):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def codec_seed(run_id: str, round_index: int, part: int, role: str) -> int:
    """Deterministic dither seed of one encoding (``role`` = sender index or "aggregate")."""
    digest = hashlib.sha256(f"{run_id}/{round_index}/{part}/{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_MODULUS


@dataclass(frozen=True)
class PartFailure:
    """Part ``index`` (values ``start:stop``, owned by ``owner``) did not arrive; ``reason`` says why."""

    index: int
    owner: str
    start: int
    stop: int
    reason: str


@dataclass
class AllReduceOutcome:
    average: torch.Tensor  # [numel] float32, NaN where a part failed
    failed_parts: list[PartFailure]
    rejections: list[tuple[int, Rejection]]  # (part index, evidence) reported by every owner
    own_norm_ratios: dict[str, float]  # contributors to this peer's part
    reconstruction: torch.Tensor | None  # [numel] what the owners decode from this peer's contributions


@dataclass
class _OwnerPart:
    numel: int
    contributions: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # the contributors' declared weights
    payloads: dict[str, bytes] = field(default_factory=dict)  # their bytes (gathering codecs only)
    rejections: list[Rejection] = field(default_factory=list)
    received: set[str] = field(default_factory=set)  # arrived (duplicates are refused)
    settled: set[str] = field(default_factory=set)  # decoded or rejected
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    result: asyncio.Future | None = None


def decode_part(codec: Codec, payload: bytes, numel: int) -> torch.Tensor:
    """Decode one part of ``numel`` values, as a flat float32 tensor.

    A LILA codec payload's declared element count is read from its fixed header and checked against
    ``numel`` BEFORE decoding: the frame limit (``AveragingConfig.max_part_payload``) bounds the bytes, but
    a 2-bit payload of that size can declare 15 times the part's values, and decoding it would allocate
    hundreds of MiB per forged contribution. ``tests/integration/test_attacks_memory.py`` performs it.
    """
    if bytes(payload[: len(lila_wire.MAGIC)]) == lila_wire.MAGIC:
        declared = lila_wire.declared_numel(payload)
        if declared != numel:
            raise ValueError(f"part payload declares {declared} values, the part has {numel}: refused undecoded")
    tensor = codec.decode(payload)
    if not isinstance(tensor, torch.Tensor) or tensor.numel() != numel:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"decoded part has shape {shape}, expected {numel} values")
    return tensor.reshape(numel).to(torch.float32)  # [numel]


class AllReduceSession:
    """One round's all-reduce for one group; :meth:`accept` serves the contributions to our part.

    Part ``j`` belongs to ``group.owners[j]``; client-mode members own nothing and only contribute.
    A member that cannot encode its slice sends an empty payload: it abstains from that part but still
    gets the aggregate.
    """

    def __init__(
        self,
        *,
        endpoint: Endpoint,
        run_id: str,
        config: AveragingConfig,
        group: Group,
        vector: torch.Tensor,
        codec: Codec,
        aggregator: Aggregator,
        counter: ByteCounter,
        want_reconstruction: bool = False,
        weight: float = 1.0,
    ) -> None:
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight={weight!r}: a contribution's weight must be a finite number > 0")
        self.endpoint = endpoint
        self.weight = float(weight)
        self.run_id = run_id
        self.config = config
        self.group = group
        self.vector = vector
        self.codec = codec
        self.aggregator = aggregator
        self.counter = counter
        self.want_reconstruction = want_reconstruction
        self.me = endpoint.transport.peer_id
        self.role = str(group.index_of(self.me))  # seeds this peer's encodings
        self.my_part = group.part_of(self.me)  # None: client mode, owns nothing
        self.bounds = part_bounds(vector.numel(), len(group.owners))
        self._part: _OwnerPart | None = None
        if self.my_part is not None:
            start, stop = self.bounds[self.my_part]
            self._part = _OwnerPart(numel=stop - start)
            self._part.result = asyncio.get_running_loop().create_future()
        self._final_deadline = math.inf
        self._own_norm_ratios: dict[str, float] = {}
        self._pending_replies = 0  # aggregate replies being written to contributors
        self._replies_idle = asyncio.Event()
        self._replies_idle.set()

    # ------------------------------------------------------------------ running the round
    async def run(self) -> AllReduceOutcome:
        loop = asyncio.get_running_loop()
        numel = self.vector.numel()
        part_deadline = loop.time() + self.config.part_timeout
        self._final_deadline = part_deadline + self.config.result_timeout
        average = torch.full((numel,), math.nan, dtype=torch.float32)  # [numel]
        reconstruction = (
            torch.full((numel,), math.nan, dtype=torch.float32) if self.want_reconstruction else None
        )
        failed: list[PartFailure] = []
        evidence: list[tuple[int, Rejection]] = []

        if self.my_part is not None:
            start, stop = self.bounds[self.my_part]
            own = await self._encode_contribution(self.my_part)
            own_decoded = None
            if own:
                own_decoded = await self._in_executor(decode_part, self.codec, own, stop - start)
                if reconstruction is not None:
                    reconstruction[start:stop] = own_decoded
            self._add_contribution(self.me, own_decoded, self.weight, own)
        senders = [
            asyncio.ensure_future(self._send_part(index, average, reconstruction, failed, evidence))
            for index in range(len(self.group.owners))
            if index != self.my_part
        ]
        if self.my_part is not None:
            await self._reduce_own_part(part_deadline, average, failed, evidence)
        await asyncio.gather(*senders)
        # let our aggregate reach the members (and be counted) before the round is reported done
        grace = min(self.config.request_timeout, max(self._final_deadline - loop.time(), 0.0))
        try:
            await asyncio.wait_for(self._replies_idle.wait(), timeout=grace)
        except asyncio.TimeoutError:
            logger.info(
                "round %d: %d aggregate replies still in flight",
                self.group.round_index,
                self._pending_replies,
            )
        failed.sort(key=lambda item: item.index)
        return AllReduceOutcome(
            average=average,
            failed_parts=failed,
            rejections=sorted(evidence, key=lambda item: (item[0], item[1].peer_id)),
            own_norm_ratios=self._own_norm_ratios,
            reconstruction=reconstruction,
        )

    async def _in_executor(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _encode(self, tensor: torch.Tensor, part: int, role: str) -> bytes:
        seed = codec_seed(self.run_id, self.group.round_index, part, role)
        return await self._in_executor(lambda: bytes(self.codec.encode(tensor.contiguous(), seed=seed)))

    async def _encode_contribution(self, index: int) -> bytes:
        """Our slice of part ``index`` encoded, or b"" (abstain) when the codec refuses it."""
        start, stop = self.bounds[index]
        try:
            payload = await self._encode(self.vector[start:stop], index, self.role)
        except Exception as error:
            logger.error(
                "round %d: cannot encode our slice of part %d (%r); abstaining",
                self.group.round_index,
                index,
                error,
            )
            return b""
        if not payload:
            raise ValueError("the codec returned an empty payload; it must encode even an all-zero tensor")
        return payload

    async def _send_part(
        self,
        index: int,
        average: torch.Tensor,
        reconstruction: torch.Tensor | None,
        failed: list[PartFailure],
        evidence: list[tuple[int, Rejection]],
    ) -> None:
        owner = self.group.owners[index]
        start, stop = self.bounds[index]
        try:
            payload = await self._encode_contribution(index)
            if reconstruction is not None and payload:
                reconstruction[start:stop] = await self._in_executor(
                    decode_part, self.codec, payload, stop - start
                )
            gather = gathers(self.codec)  # the reply holds up to N - 1 contributions, not one aggregate
            limits = Limits(
                self.config.max_credential_bytes,
                self.config.max_header_bytes,
                self.config.max_part_payload(stop - start) * (len(self.group.members) - 1 if gather else 1),
            )
            result = await call(
                self.endpoint,
                owner,
                protocol(self.run_id, "part"),
                header=self._header(index),
                payload=payload,
                timeout=max(self._final_deadline - asyncio.get_running_loop().time(), 0.0),
                reply_limits=limits,
            )
            self.counter.add(result.bytes_received, result.bytes_sent)
            if gather:
                entries = unpack(result.frame.header, result.frame.payload, members=self.group.members,
                                 me=self.me, own=payload)
                decoded = await self._in_executor(lambda: combine(
                    entries, decode=lambda entry: decode_part(self.codec, entry.payload, stop - start),
                    aggregator=self.aggregator, numel=stop - start))
            else:
                decoded = await self._in_executor(decode_part, self.codec, result.frame.payload, stop - start)
            evidence.extend(
                (index, rejection) for rejection in _parse_rejections(result.frame.header, self.group)
            )
            average[start:stop] = decoded
        except asyncio.CancelledError:
            raise
        except Exception as error:
            reason = f"{error.code}: {error.message}" if isinstance(error, RemoteError) else repr(error)
            logger.warning(
                "round %d: part %d from owner %s failed: %s", self.group.round_index, index, owner, reason
            )
            failed.append(PartFailure(index, owner, start, stop, reason))

    def _header(self, index: int) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "round": self.group.round_index,
            "group_id": self.group.group_id,
            "part": index,
            "weight": self.weight,
        }

    async def _reduce_own_part(
        self,
        deadline: float,
        average: torch.Tensor,
        failed: list[PartFailure],
        evidence: list[tuple[int, Rejection]],
    ) -> None:
        part, index = self._part, self.my_part
        assert part is not None and index is not None
        start, stop = self.bounds[index]
        try:
            await asyncio.wait_for(
                part.complete.wait(), timeout=max(deadline - asyncio.get_running_loop().time(), 0)
            )
        except asyncio.TimeoutError:
            missing = sorted(set(self.group.members) - part.received)
            logger.warning("round %d: part %d aggregated without %s", self.group.round_index, index, missing)
        part.closed = True
        contributions = [Contribution(peer, tensor, part.weights[peer]) for peer, tensor in part.contributions.items()]
        try:
            aggregate = await self._in_executor(
                lambda: self.aggregator.aggregate(
                    contributions, numel=part.numel, prior_rejections=part.rejections
                )
            )
            if gathers(self.codec):  # the included payloads themselves (peer.averaging.gather)
                answer: bytes | list[Gathered] = [
                    Gathered(peer, part.weights[peer], part.payloads[peer]) for peer in aggregate.included]
                decoded = await self._in_executor(lambda: combine(
                    answer, decode=lambda entry: part.contributions[entry.peer_id], aggregator=self.aggregator,
                    numel=part.numel))
            else:
                answer = await self._encode(aggregate.tensor, index, "aggregate")
                decoded = await self._in_executor(decode_part, self.codec, answer, part.numel)
        except Exception as error:  # every contribution rejected, or the codec failed on the aggregate
            part.result.set_exception(Refused(ERR_PART_FAILED, str(error)))
            part.result.exception()  # retrieved: handlers re-raise it to their callers
            failed.append(PartFailure(index, self.me, start, stop, f"aggregation failed: {error}"))
            evidence.extend((index, rejection) for rejection in part.rejections)
            return
        self._own_norm_ratios = dict(aggregate.norm_ratios)
        evidence.extend((index, rejection) for rejection in aggregate.rejections)
        header = {
            "status": "ok",
            "included": list(aggregate.included),
            "rejections": [rejection.to_json() for rejection in aggregate.rejections],
        }
        part.result.set_result((header, answer))  # accept() packs a gathered answer per caller
        average[start:stop] = decoded

    # ------------------------------------------------------------------ serving contributions
    def _add_contribution(self, peer_id: str, tensor: torch.Tensor | None, weight: float = 1.0,
                          payload: bytes = b"") -> None:
        """Record a decoded contribution (None: abstained or rejected before aggregation) with its weight
        and wake the owner once every member's contribution is settled."""
        part = self._part
        assert part is not None
        if tensor is not None:
            part.contributions[peer_id] = tensor
            part.weights[peer_id] = weight
            if gathers(self.codec):
                part.payloads[peer_id] = bytes(payload)
        part.received.add(peer_id)
        part.settled.add(peer_id)
        if len(part.settled) == len(self.group.members):
            part.complete.set()

    async def accept(self, peer_id: str, frame: Frame) -> Reply:
        """Take ``peer_id``'s contribution to our part and answer with the encoded aggregate."""
        part = self._part
        if part is None or require(frame.header, "part", int) != self.my_part:
            raise Refused(ERR_WRONG_PART, f"this peer owns part {self.my_part}")
        if peer_id not in self.group.members or peer_id == self.me:
            raise Refused(ERR_WRONG_PART, "the caller is not a member of this group")
        if peer_id in part.received:
            raise Refused(ERR_DUPLICATE, "this peer already sent its contribution to our part")
        limit = self.config.max_part_payload(part.numel)
        if len(frame.payload) > limit:
            raise Refused("too_large", f"part payload of {len(frame.payload)} bytes exceeds {limit}")
        part.received.add(peer_id)
        self.counter.add(frame.wire_bytes, 0)
        if part.closed:
            logger.info(
                "round %d: contribution of %s arrived after the deadline", self.group.round_index, peer_id
            )
        elif not frame.payload:
            logger.info("round %d: %s abstains from part %s", self.group.round_index, peer_id, self.my_part)
            self._add_contribution(peer_id, None)
        else:
            try:
                tensor = await self._in_executor(decode_part, self.codec, frame.payload, part.numel)
            except Exception as error:
                logger.warning("undecodable contribution from %s: %s", peer_id, error)
                part.rejections.append(Rejection(peer_id, REASON_UNDECODABLE))
                tensor = None
            if part.closed:
                logger.info("round %d: contribution of %s decoded too late", self.group.round_index, peer_id)
            else:
                self._add_contribution(peer_id, tensor, _declared_weight(frame.header), frame.payload)
        timeout = max(self._final_deadline - asyncio.get_running_loop().time(), 0.0)
        self._pending_replies += 1
        self._replies_idle.clear()
        try:
            header, payload = await asyncio.wait_for(asyncio.shield(part.result), timeout=timeout)
        except BaseException:
            self._reply_done(0)
            raise
        if gathers(self.codec):
            listed, payload = pack(payload, caller=peer_id)
            header = {**header, GATHER_KEY: listed}
        return Reply(header=header, payload=payload, account=lambda received, sent: self._reply_done(sent))

    def _reply_done(self, sent: int) -> None:
        self.counter.add(0, sent)
        self._pending_replies -= 1
        if self._pending_replies == 0:
            self._replies_idle.set()


def _declared_weight(header: dict[str, Any]) -> float:
    """The weight a contributor declared (absent: 1, as from peers before weights); anything but a number
    reads as NaN, which the aggregator rejects as ``bad_weight`` (evidence, like any bad contribution)."""
    value = header.get("weight", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _parse_rejections(header: dict[str, Any], group: Group) -> list[Rejection]:
    """Evidence reported by an owner; malformed entries are dropped (they are informative only)."""
    raw = header.get("rejections", [])
    if not isinstance(raw, list) or len(raw) > len(group.members):
        raise WireError("owner reported a malformed rejection list")
    rejections = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        peer, reason, ratio = item.get("peer"), item.get("reason"), item.get("norm_ratio")
        if not (is_peer_id(peer) and isinstance(reason, str) and len(reason) <= 64):
            continue
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
            continue
        rejections.append(Rejection(peer, reason, None if ratio is None else float(ratio)))
    return rejections

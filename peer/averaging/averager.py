# SPDX-License-Identifier: AGPL-3.0-or-later
"""The averaging facade a DiLoCo loop uses: one blocking call per outer step, plus round verification."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lila_net.aggregation import Aggregator, Rejection
from lila_net.dht.keys import check_run_id, protocol
from lila_net.dht.records import GROUP_ID_PATTERN
from peer.averaging.allreduce import AllReduceSession, Codec, PartFailure
from peer.averaging.auth import Authorize
from peer.averaging.config import AveragingConfig
from peer.averaging.matchmaking import Group, Matchmaker
from peer.averaging.rpc import Endpoint, Refused, Reply, serve
from peer.averaging.stats import ByteCounter
from peer.averaging.transport import Transport
from peer.averaging.verify import VerifyReport, collect_hashes, judge, publish_hash
from peer.averaging.wire import Frame, Limits, WireError, require

logger = logging.getLogger(__name__)

MAX_SESSIONS = 4
ROUNDS_AHEAD = 2  # a contribution may arrive for a round this far ahead of the latest one we started
VERIFY_POLL_S = 0.25
ROUND_SLACK_S = 5.0
ERR_WRONG_GROUP = "wrong_group"
ERR_NO_SESSION = "no_session"

STATUS_OK = "ok"  # every part averaged
STATUS_ALONE = "alone"  # group of one: the average is this peer's own vector, nothing was sent
STATUS_PARTIAL = "partial"  # some parts failed (NaN there): skip the outer step or re-sync
STATUS_FAILED = "failed"  # no part arrived
STATUS_SAT_OUT = "sat_out"  # this peer was not in any group this round


@dataclass
class RoundResult:
    """What one round gave this peer. Check :attr:`ok` before applying :attr:`average`."""

    round_index: int
    status: str
    reason: str
    group: Group | None
    average: torch.Tensor | None  # [numel] float32; NaN in failed parts; None when sat out
    failed_parts: list[PartFailure] = field(default_factory=list)
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)
    own_norm_ratios: dict[str, float] = field(default_factory=dict)
    reconstruction: torch.Tensor | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    matchmaking_s: float = 0.0
    allreduce_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when :attr:`average` is complete (every part arrived, or the peer was alone)."""
        return self.status in (STATUS_OK, STATUS_ALONE)

    @property
    def group_size(self) -> int:
        return 0 if self.group is None else len(self.group.members)


class Averager:
    """Averages one flat float32 vector per round with whichever authorized peers showed up.

    ``max_numel`` bounds the vectors (and therefore the payloads) this peer accepts; pass the number of
    parameters. ``credential`` is sent with every request; ``authorize`` checks the other side's. Must be
    created and used from threads other than the transport's loop thread.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        run_id: str,
        credential: bytes,
        authorize: Authorize,
        max_numel: int,
        config: AveragingConfig | None = None,
    ) -> None:
        if not isinstance(max_numel, int) or max_numel < 1:
            raise ValueError(
                f"max_numel must be a positive int (the number of parameters), got {max_numel!r}"
            )
        self.transport = transport
        self.run_id = check_run_id(run_id)
        self.config = config or AveragingConfig()
        self.max_numel = max_numel
        self.endpoint = Endpoint(
            transport,
            credential,
            authorize,
            Limits(self.config.max_credential_bytes, self.config.max_header_bytes, 0),
        )
        self.matchmaker = Matchmaker(self.endpoint, run_id=self.run_id, config=self.config)
        self._sessions: dict[int, asyncio.Future] = {}
        self._latest_round = -1
        transport.run(self._start(), timeout=self.config.request_timeout + ROUND_SLACK_S)

    async def _start(self) -> None:
        await self.matchmaker.start()
        limits = Limits(
            self.config.max_credential_bytes,
            self.config.max_header_bytes,
            self.config.max_part_payload(self.max_numel),
        )
        await serve(self.endpoint, protocol(self.run_id, "part"), self._on_part, limits=limits)

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id

    def set_credential(self, credential: bytes) -> None:
        """Present ``credential`` from now on (after the coordinator renewed it)."""
        self.endpoint.credential = bytes(credential)

    @property
    def round_timeout(self) -> float:
        """Upper bound on one :meth:`average` call."""
        cfg = self.config
        join = cfg.matchmaking_time + (cfg.max_leader_attempts + 1) * (cfg.join_timeout + cfg.request_timeout)
        return join + cfg.allreduce_deadline + ROUND_SLACK_S

    # ------------------------------------------------------------------ averaging
    def average(
        self,
        round_index: int,
        vector: torch.Tensor,
        *,
        codec: Codec,
        aggregator: Aggregator,
        on_group: Callable[[Group], None] | None = None,
        want_reconstruction: bool = False,
        expected_peers: Iterable[str] | None = None,
        weight: float = 1.0,
    ) -> RoundResult:
        """Average ``vector`` ([numel] float32, CPU) with the peers of round ``round_index`` (blocking).

        ``on_group(group)`` runs on the transport loop once the group is fixed (keep it short).
        ``want_reconstruction`` also returns what the owners decode from this peer's contributions, for
        error feedback: ``residual = vector - result.reconstruction``. ``expected_peers``: the other
        peers known to be coming to this round (e.g. from a round barrier): matchmaking ends as soon as
        they all announced, instead of after the whole ``matchmaking_time``. ``weight``: how much this
        peer's contribution counts (the tokens it trained this round; see :mod:`lila_net.aggregation`).
        """
        self._check_vector(vector)
        coro = self.average_async(
            round_index,
            vector,
            codec=codec,
            aggregator=aggregator,
            on_group=on_group,
            want_reconstruction=want_reconstruction,
            expected_peers=expected_peers,
            weight=weight,
        )
        return self.transport.run(coro, timeout=self.round_timeout + ROUND_SLACK_S)

    def _check_vector(self, vector: torch.Tensor) -> None:
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or vector.dtype != torch.float32:
            raise ValueError(
                "average() needs a 1-D float32 tensor: flatten the pseudo-gradient into one vector"
            )
        if vector.device.type != "cpu":
            raise ValueError(f"average() needs a CPU tensor, got one on {vector.device}: call .cpu() first")
        if not 1 <= vector.numel() <= self.max_numel:
            raise ValueError(f"vector has {vector.numel()} values; this averager accepts 1..{self.max_numel}")

    async def average_async(
        self,
        round_index: int,
        vector: torch.Tensor,
        *,
        codec: Codec,
        aggregator: Aggregator,
        on_group: Callable[[Group], None] | None = None,
        want_reconstruction: bool = False,
        expected_peers: Iterable[str] | None = None,
        weight: float = 1.0,
    ) -> RoundResult:
        """Coroutine form of :meth:`average`, to be awaited on the transport loop."""
        self._check_vector(vector)
        vector = vector.detach().clone()  # the caller may keep training while we send
        self._latest_round = max(self._latest_round, round_index)
        counter = ByteCounter()
        started = time.monotonic()
        try:
            outcome = await asyncio.wait_for(
                self.matchmaker.form_group(
                    round_index,
                    counter,
                    expected=None if expected_peers is None else frozenset(expected_peers),
                ),
                timeout=self.round_timeout,
            )
        except asyncio.TimeoutError:
            return RoundResult(round_index, STATUS_SAT_OUT, "matchmaking timed out", None, None)
        matched = time.monotonic()
        self.matchmaker.forget_before(round_index - MAX_SESSIONS)
        base = {"round_index": round_index, "group": outcome.group, "matchmaking_s": matched - started}
        if outcome.group is None:
            logger.info("round %d: sitting out (%s)", round_index, outcome.reason)
            return RoundResult(status=STATUS_SAT_OUT, reason=outcome.reason, average=None, **base)
        group = outcome.group
        if on_group is not None:
            on_group(group)
        if len(group.members) == 1:
            reconstruction = vector.clone() if want_reconstruction else None
            return RoundResult(
                status=STATUS_ALONE,
                reason=outcome.reason,
                average=vector,
                reconstruction=reconstruction,
                bytes_sent=counter.sent,
                bytes_received=counter.received,
                **base,
            )
        session = AllReduceSession(
            endpoint=self.endpoint,
            run_id=self.run_id,
            config=self.config,
            group=group,
            vector=vector,
            codec=codec,
            aggregator=aggregator,
            counter=counter,
            want_reconstruction=want_reconstruction,
            weight=weight,
        )
        slot = self._session_slot(round_index)
        if slot.done():  # a stale session of a previous attempt at this round
            slot = self._sessions[round_index] = asyncio.get_running_loop().create_future()
        slot.set_result(session)
        reduced = await session.run()
        failed = len(reduced.failed_parts)
        if failed == 0:
            status, reason = STATUS_OK, outcome.reason
        elif failed == len(group.owners):
            status, reason = STATUS_FAILED, "every part failed"
        else:
            status, reason = STATUS_PARTIAL, f"{failed} of {len(group.owners)} parts failed"
        logger.info(
            "round %d: %s with %d peers, sent %d B, received %d B",
            round_index,
            status,
            len(group.members),
            counter.sent,
            counter.received,
        )
        return RoundResult(
            status=status,
            reason=reason,
            average=reduced.average,
            failed_parts=reduced.failed_parts,
            rejections=reduced.rejections,
            own_norm_ratios=reduced.own_norm_ratios,
            reconstruction=reduced.reconstruction,
            bytes_sent=counter.sent,
            bytes_received=counter.received,
            allreduce_s=time.monotonic() - matched,
            **base,
        )

    def _session_slot(self, round_index: int) -> asyncio.Future:
        slot = self._sessions.get(round_index)
        if slot is None:
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions)]
            slot = self._sessions[round_index] = asyncio.get_running_loop().create_future()
        return slot

    async def _on_part(self, peer_id: str, frame: Frame) -> Reply:
        if require(frame.header, "run", str) != self.run_id:
            raise Refused("wrong_run", f"this peer averages run {self.run_id!r}")
        round_index = require(frame.header, "round", int)
        group_id = require(frame.header, "group_id", str)
        if round_index < 0 or not GROUP_ID_PATTERN.match(group_id):
            raise WireError("round must be >= 0 and group_id 16 hex digits")
        if round_index not in self._sessions and not (
            self._latest_round - MAX_SESSIONS < round_index <= self._latest_round + ROUNDS_AHEAD
        ):
            raise Refused(
                ERR_NO_SESSION, f"round {round_index} is not current here (latest {self._latest_round})"
            )
        slot = self._session_slot(round_index)
        wait = self.config.join_timeout + self.config.request_timeout
        try:
            session = await asyncio.wait_for(asyncio.shield(slot), timeout=wait)
        except asyncio.TimeoutError:
            raise Refused(ERR_NO_SESSION, f"this peer has no group for round {round_index}") from None
        if session.group.group_id != group_id:
            raise Refused(ERR_WRONG_GROUP, "this peer is in another group this round")
        return await session.accept(peer_id, frame)

    # ------------------------------------------------------------------ verification
    def verify_round(
        self,
        round_index: int,
        digest: str,
        *,
        members: Sequence[str] = (),
        wait: float | None = None,
        trusted: str = "",
    ) -> VerifyReport:
        """Publish ``digest`` (``params_hash`` of the new global parameters) for round ``round_index`` and
        compare it with the group's (see :func:`peer.averaging.verify.judge`; ``trusted``: the
        coordinator's majority hash of this step, if known). Waits up to ``wait`` seconds (default
        ``join_timeout``) for every peer in ``members`` (e.g. ``result.group.members``) to publish."""
        wait = self.config.join_timeout if wait is None else wait
        return self.transport.run(
            self._verify(round_index, digest, members, wait, trusted), timeout=wait + ROUND_SLACK_S * 2
        )

    async def _verify(
        self, round_index: int, digest: str, members: Sequence[str], wait: float, trusted: str = ""
    ) -> VerifyReport:
        expiration = self.round_timeout * 2
        await publish_hash(self.transport, self.run_id, round_index, digest, expiration_s=expiration)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            hashes = await collect_hashes(self.transport, self.run_id, round_index)
            if set(members) <= set(hashes) | {self.peer_id} or loop.time() >= deadline:
                return judge(round_index, self.peer_id, digest, hashes, members, trusted=trusted)
            await asyncio.sleep(VERIFY_POLL_S)

    def shutdown(self) -> None:
        """Stop serving this run's averaging protocols (the transport stays up)."""
        if self.transport.is_alive:
            self.transport.run(self._stop(), timeout=self.config.request_timeout + ROUND_SLACK_S)

    async def _stop(self) -> None:
        for name in ("join", "part"):
            await self.transport.remove_handler(protocol(self.run_id, name))


def describe(result: RoundResult) -> dict[str, Any]:
    """A JSON-friendly summary of a round for logs and metrics."""
    return {
        "round": result.round_index,
        "status": result.status,
        "reason": result.reason,
        "group_size": result.group_size,
        "failed_parts": [part.index for part in result.failed_parts],
        "rejections": [{"part": index, **rejection.to_json()} for index, rejection in result.rejections],
        "bytes_sent": result.bytes_sent,
        "bytes_received": result.bytes_received,
        "matchmaking_s": round(result.matchmaking_s, 3),
        "allreduce_s": round(result.allreduce_s, 3),
    }

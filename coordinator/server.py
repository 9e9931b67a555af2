# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's gRPC service (``lila.v1.Coordinator``) on ``grpc.aio``.

Every call goes through one wrapper that, in order: checks the session token (all methods but
Join; UNAUTHENTICATED with what to do), applies the per-peer rate limit (RESOURCE_EXHAUSTED with
the wait), parses the request bytes itself (INVALID_ARGUMENT naming the message on garbage),
validates fields (INVALID_ARGUMENT naming the field), bounds the handler's time
(DEADLINE_EXCEEDED), maps core refusals to status codes, and records count and latency. Any
unexpected error becomes INTERNAL for that call only: the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from coordinator import actions as act
from coordinator import events as ev
from coordinator import splits
from coordinator import validation as check
from coordinator.auth import AuthError, SessionClaims, SessionSigner, check_join_token
from coordinator.engine import Engine, StorageUnavailable
from coordinator.metrics import CoordinatorMetrics
from coordinator.ratelimit import RateLimiter
from coordinator.reachability import (
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    dial_back,
    format_address,
    observed_host,
    scrape_target,
)
from coordinator.settings import ServerSettings
from coordinator.state import LIVE_STATES, Hardware, Lease, PeerState
from coordinator.status import StatusBoard
from lila_net import phases
from lila_net.credentials import CredentialAuthority, CredentialError, CredentialVerifier
from lila_net.dht.keys import run_dht_id
from lila_net.proto import coordinator_pb2 as pb
from lila_net.tls import ServerTls

logger = logging.getLogger(__name__)

SERVICE_NAME = "lila.v1.Coordinator"
AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
PEER_ID_BYTES = 8
STOP_GRACE_S = 2.0
MAX_REVOKED_IN_REPLY = 10_000
REVOKED_CACHE_S = 1.0  # the ban list and the majority hash are rebuilt at most this often (scans of every peer)

_STATE_TO_PROTO = {
    PeerState.JOINING: pb.PEER_STATE_JOINING,
    PeerState.ACTIVE: pb.PEER_STATE_ACTIVE,
    PeerState.LOST: pb.PEER_STATE_LOST,
    PeerState.LEFT: pb.PEER_STATE_LEFT,
    PeerState.BANNED: pb.PEER_STATE_BANNED,
}
_REJECT_TO_STATUS = {
    act.RejectCode.UNKNOWN_PEER: grpc.StatusCode.UNAUTHENTICATED,
    act.RejectCode.PEER_GONE: grpc.StatusCode.UNAUTHENTICATED,
    act.RejectCode.BANNED: grpc.StatusCode.PERMISSION_DENIED,
    act.RejectCode.UNKNOWN_LEASE: grpc.StatusCode.FAILED_PRECONDITION,
    act.RejectCode.BAD_POSITION: grpc.StatusCode.INVALID_ARGUMENT,
    act.RejectCode.BAD_VALUE: grpc.StatusCode.INVALID_ARGUMENT,
    act.RejectCode.TOO_MANY_SESSIONS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    act.RejectCode.STEP_AHEAD: grpc.StatusCode.FAILED_PRECONDITION,
}


class RpcError(Exception):
    """End the call with ``code`` and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


if sys.version_info >= (3, 11):

    def _time_limit(seconds: float) -> Any:
        return asyncio.timeout(seconds)
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _time_limit(seconds: float) -> Any:
        yield  # 3.10 has no cheap per-call timeout; the client deadline still applies


@dataclass(frozen=True)
class RunDescription:
    """What Join hands out besides the session."""

    run_config_toml: str
    dht_initial_peers: Sequence[str] = ()


class CoordinatorService:
    """Implements every RPC on top of an :class:`~coordinator.engine.Engine`."""

    def __init__(
        self,
        *,
        engine: Engine,
        signer: SessionSigner,
        settings: ServerSettings,
        description: RunDescription,
        metrics: CoordinatorMetrics,
        status: StatusBoard,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        authority: CredentialAuthority | None = None,
    ) -> None:
        self.engine = engine
        self.authority = authority
        self._revoked_cache: tuple[float, list[str]] = (-float("inf"), [])
        self._revoked_cache_tokens: frozenset[str] = frozenset()  # the revoked join tokens it was built with
        self._majority_cache: tuple[float, str, tuple[tuple[int, str], ...], int] = (-float("inf"), "", (), 0)
        self.signer = signer
        self.settings = settings
        self.description = description
        self.metrics = metrics
        self.status = status
        self._clock = clock
        self._monotonic = monotonic
        self._peer_limiter = RateLimiter(
            rate_per_s=settings.coordinator.rate_limit_per_s, burst=settings.coordinator.rate_limit_burst
        )
        self._join_limiter = RateLimiter(
            rate_per_s=settings.coordinator.join_rate_limit_per_s, burst=settings.coordinator.join_rate_limit_burst
        )
        self.revoked_token_ids: set[str] = set()
        self._methods: dict[str, tuple[type[Message], Callable[..., Awaitable[Message]], bool]] = {
            "Join": (pb.JoinRequest, self._join, False),
            "Heartbeat": (pb.HeartbeatRequest, self._heartbeat, True),
            "LeaseShard": (pb.LeaseShardRequest, self._lease_shard, True),
            "ReportProgress": (pb.ReportProgressRequest, self._report_progress, True),
            "CompleteShard": (pb.CompleteShardRequest, self._complete_shard, True),
            "ReleaseShard": (pb.ReleaseShardRequest, self._release_shard, True),
            "ReportMetrics": (pb.ReportMetricsRequest, self._report_metrics, True),
            "ReportOuterStep": (pb.ReportOuterStepRequest, self._report_outer_step, True),
            "Leave": (pb.LeaveRequest, self._leave, True),
            "GetStatus": (pb.GetStatusRequest, self._get_status, True),
            "IssueCredential": (pb.IssueCredentialRequest, self._issue_credential, True),
            "ReportStrike": (pb.ReportStrikeRequest, self._report_strike, True),
            "ReportClaim": (pb.ReportClaimRequest, self._report_claim, True),
            "CheckReachability": (pb.CheckReachabilityRequest, self._check_reachability, True),
        }

    # ------------------------------------------------------------------ plumbing

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The handler to add to a ``grpc.aio`` server (requests arrive as raw bytes)."""
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name), request_deserializer=None, response_serializer=_serialize
            )
            for name in self._methods
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _wrap(self, name: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
        request_type, method, authenticated = self._methods[name]
        timeout = self.settings.coordinator.handler_timeout_s

        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            started = time.perf_counter()
            code, message, response = grpc.StatusCode.OK, "", None
            try:
                async with _time_limit(timeout):
                    claims = self._authenticate(context) if authenticated else None
                    self._limit(claims.peer_id if claims else _client_address(context), authenticated)
                    request = self._parse(request_type, raw)
                    response = await method(request, claims, context)
            except RpcError as exc:
                code, message = exc.code, exc.message
            except check.InvalidArgument as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except AuthError as exc:
                code, message = grpc.StatusCode.UNAUTHENTICATED, str(exc)
            except StorageUnavailable as exc:
                code, message = grpc.StatusCode.UNAVAILABLE, f"{exc}; retry in a few seconds"
            except TimeoutError:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                message = f"{name} took longer than {timeout:g} s inside the coordinator; retry with backoff"
            except Exception:
                logger.exception("%s failed", name)
                code, message = (
                    grpc.StatusCode.INTERNAL,
                    f"{name} hit an internal error in the coordinator; retry later",
                )
            self.metrics.observe_rpc(name, code.name, time.perf_counter() - started)
            if code is not grpc.StatusCode.OK:
                await context.abort(code, message)
            return response

        return handler

    def _authenticate(self, context: grpc.aio.ServicerContext) -> SessionClaims:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_METADATA_KEY:
                token = value if isinstance(value, str) else value.decode(errors="replace")
                break
        if not token.startswith(BEARER_PREFIX):
            raise AuthError(
                f"no session token: send metadata '{AUTH_METADATA_KEY}: {BEARER_PREFIX}<session token from Join>' "
                "(call Join first)"
            )
        claims = self.signer.verify(token[len(BEARER_PREFIX) :], now=self._clock())
        if claims.token_id in self.revoked_token_ids:
            raise AuthError(
                f"join token {claims.token_id} of this session was revoked: ask the organizer for a new one"
            )
        return claims

    def _limit(self, key: str, peer: bool) -> None:
        limiter = self._peer_limiter if peer else self._join_limiter
        wait = limiter.acquire(key, self._monotonic())
        if wait > 0:
            what = "peer" if peer else "client address (Join)"
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {limiter.rate_per_s:g} calls/s per {what} exceeded: retry in {wait:.2f} s",
            )

    @staticmethod
    def _parse(request_type: type[Message], raw: bytes) -> Message:
        try:
            return request_type.FromString(raw)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise check.InvalidArgument(
                f"request is not a valid {request_type.DESCRIPTOR.full_name} message ({exc}); "
                "regenerate your client from proto/lila/v1/coordinator.proto"
            ) from None

    async def _submit(self, event: ev.Event) -> list[act.Action]:
        actions = await self.engine.submit(event)
        for action in actions:
            if isinstance(action, act.Rejected):
                raise RpcError(_REJECT_TO_STATUS[action.code], action.message)
            if isinstance(action, act.PeerStateChanged) and action.new is PeerState.BANNED:
                self._revoked_cache = (-float("inf"), [])  # publish the ban at once
        return actions

    def _lease_message(self, lease: Lease) -> pb.Lease:
        plan = self.engine.state.plan
        spec = plan.shard(lease.key)
        stage = plan.stages[lease.stage]
        assert spec is not None
        return pb.Lease(
            lease_id=lease.lease_id,
            shard=pb.ShardAddress(
                shard_id=spec.shard_id,
                source=spec.source,
                file=spec.file,
                row_start=spec.row_start,
                row_stop=spec.row_stop,
            ),
            stage_index=lease.stage,
            stage_name=stage.name,
            position=pb.ResumePosition(
                docs_consumed=lease.position.docs_consumed, tokens_consumed=lease.position.tokens_consumed
            ),
            seq_len=stage.seq_len,
            doc_filter=stage.doc_filter or "",
        )

    # ------------------------------------------------------------------ methods

    async def _join(
        self, request: pb.JoinRequest, _: None, context: grpc.aio.ServicerContext
    ) -> pb.JoinResponse:
        name = check.text("peer_name", request.peer_name, max_chars=check.MAX_NAME_CHARS, required=True)
        hw = request.hardware
        hardware = Hardware(
            device_type=check.text(
                "hardware.device_type", hw.device_type, max_chars=check.MAX_SHORT_TEXT_CHARS
            ),
            device_name=check.text(
                "hardware.device_name", hw.device_name, max_chars=check.MAX_SHORT_TEXT_CHARS
            ),
            memory_bytes=check.count("hardware.memory_bytes", hw.memory_bytes),
            cpu_cores=check.count("hardware.cpu_cores", hw.cpu_cores),
        )
        version = check.text("client_version", request.client_version, max_chars=check.MAX_NAME_CHARS)
        metrics_address = check.host_port("metrics_address", request.metrics_address)
        now = self._clock()
        row = check_join_token(self.engine.storage, request.join_token, now=now)
        if request.previous_session_token:
            try:
                peer_id = self.signer.resume(
                    request.previous_session_token, token_id=row.token_id, now=now
                ).peer_id
            except AuthError as exc:
                raise check.InvalidArgument(
                    f"previous_session_token: {exc} (or leave it empty to join as a new peer)"
                ) from None
        else:
            peer_id = f"p-{secrets.token_hex(PEER_ID_BYTES)}"
        metrics_address, why_not = scrape_target(metrics_address, observed_host(context.peer()))
        if why_not:
            logger.warning("peer %s (%s): not scraping its metrics: %s", peer_id, name, why_not)
        actions = await self._submit(
            ev.PeerJoined(peer_id, name, hardware, version, metrics_address, token_id=row.token_id)
        )
        admitted = next(a for a in actions if isinstance(a, act.PeerAdmitted))
        state = self.engine.state
        logger.info("peer %s (%s) %s", peer_id, name, "rejoined" if admitted.rejoined else "joined")
        return pb.JoinResponse(
            peer_id=peer_id,
            session_token=self.signer.issue(peer_id, row.token_id, now=now),
            session_ttl_s=self.signer.ttl_s,
            run_config_toml=self.description.run_config_toml,
            dht_initial_peers=list(self.description.dht_initial_peers),
            current_outer_step=state.outer_step,
            start_outer_step=admitted.start_outer_step,
            heartbeat_interval_s=self.settings.coordinator.heartbeat_interval_s,
            lease_timeout_s=self.settings.coordinator.lease_timeout_s,
            last_report_seq=admitted.last_report_seq,
            authority_public_keys=self._authority_keys(),
            observed_host=observed_host(context.peer()),
            outer_step_sha256=self.outer_step_sha256(),
            recent_step_hashes=self.recent_step_hashes(),
            growth_outer_steps=state.announced_growths,
        )

    async def _heartbeat(
        self, request: pb.HeartbeatRequest, claims: SessionClaims, _: Any
    ) -> pb.HeartbeatResponse:
        phase = check.text("phase", request.phase, max_chars=check.MAX_PHASE_CHARS)
        await self._submit(ev.Heartbeat(claims.peer_id, phase))
        state = self.engine.state
        peer = state.peers[claims.peer_id]
        return pb.HeartbeatResponse(
            lease_ids=[lease.lease_id for lease in state.leases_of(claims.peer_id)],
            current_outer_step=state.outer_step,
            stage_index=state.stage_index,
            run_finished=state.finished,
            state=_STATE_TO_PROTO[peer.state],
            revoked_libp2p_ids=self.revoked_libp2p_ids(),
            outer_step_sha256=self.outer_step_sha256(),
            recent_step_hashes=self.recent_step_hashes(),
            peers_taking_part=self.peers_taking_part(),
            growth_outer_steps=state.announced_growths,
        )

    async def _lease_shard(
        self, request: pb.LeaseShardRequest, claims: SessionClaims, _: Any
    ) -> pb.LeaseShardResponse:
        actions = await self._submit(ev.LeaseRequested(claims.peer_id))
        for action in actions:
            if isinstance(action, act.LeaseGranted):
                return pb.LeaseShardResponse(lease=self._lease_message(action.lease), granted=True)
            if isinstance(action, act.NoWork):
                return pb.LeaseShardResponse(
                    granted=False,
                    reason=action.reason,
                    retry_after_s=action.retry_after_s,
                    run_finished=action.finished,
                )
        raise RuntimeError(f"LeaseRequested gave neither a lease nor a refusal: {actions}")

    async def _report(self, event: ev.Event) -> act.ReportAccepted:
        actions = await self._submit(event)
        return next(a for a in actions if isinstance(a, act.ReportAccepted))

    async def _report_progress(
        self, request: pb.ReportProgressRequest, claims: SessionClaims, _: Any
    ) -> Message:
        accepted = await self._report(
            ev.ProgressReported(
                claims.peer_id,
                check.lease_id(request.lease_id),
                check.report_seq(request.report_seq),
                check.position("position", request.position, request.HasField("position")),
            )
        )
        return pb.ReportProgressResponse(
            credited_tokens=accepted.credited,
            duplicate=accepted.duplicate,
            peer_tokens_total=accepted.peer_tokens,
        )

    async def _complete_shard(
        self, request: pb.CompleteShardRequest, claims: SessionClaims, _: Any
    ) -> Message:
        accepted = await self._report(
            ev.ShardCompleted(
                claims.peer_id,
                check.lease_id(request.lease_id),
                check.report_seq(request.report_seq),
                check.position("position", request.position, request.HasField("position")),
            )
        )
        return pb.CompleteShardResponse(
            credited_tokens=accepted.credited,
            duplicate=accepted.duplicate,
            peer_tokens_total=accepted.peer_tokens,
        )

    async def _release_shard(self, request: pb.ReleaseShardRequest, claims: SessionClaims, _: Any) -> Message:
        accepted = await self._report(
            ev.ShardReleased(
                claims.peer_id,
                check.lease_id(request.lease_id),
                check.report_seq(request.report_seq),
                check.position("position", request.position, request.HasField("position")),
            )
        )
        return pb.ReleaseShardResponse(credited_tokens=accepted.credited, duplicate=accepted.duplicate)

    async def _report_metrics(
        self, request: pb.ReportMetricsRequest, claims: SessionClaims, _: Any
    ) -> Message:
        event = ev.MetricsReported(
            claims.peer_id,
            outer_step=check.count("outer_step", request.outer_step),
            loss=check.number("loss", request.loss),
            val_bpb=check.number("val_bpb", request.val_bpb) if request.HasField("val_bpb") else None,
            tokens_per_s=check.number("tokens_per_s", request.tokens_per_s),
            tokens_processed=check.count("tokens_processed", request.tokens_processed),
            bytes_sent=check.count("bytes_sent", request.bytes_sent),
            bytes_received=check.count("bytes_received", request.bytes_received),
            uplink_bytes_per_s=check.number("uplink_bytes_per_s", request.uplink_bytes_per_s),
            downlink_bytes_per_s=check.number("downlink_bytes_per_s", request.downlink_bytes_per_s),
            reachability=check.reachability("reachability", request.reachability),
        )
        await self._submit(event)
        return pb.ReportMetricsResponse()

    async def _report_outer_step(
        self, request: pb.ReportOuterStepRequest, claims: SessionClaims, _: Any
    ) -> Message:
        actions = await self._submit(
            ev.OuterStepReported(
                claims.peer_id,
                check.count("outer_step", request.outer_step),
                params_sha256=check.sha256("params_sha256", request.params_sha256),
                group_size=check.group_size("group_size", request.group_size),
                group=check.group("group_libp2p_ids", request.group_libp2p_ids),
            )
        )
        self._majority_cache = (-float("inf"), "", (), 0)  # this report may change the majority: rebuild it
        for found in (a.split for a in actions if isinstance(a, act.SplitFound)):
            logger.warning(
                "outer step %d is split: %s; %d of %d active peers averaged alone%s",
                found.step,
                ", ".join(f"{h[:12]}… ×{n}" for h, n in found.hashes) or "no hashes",
                found.groups_of_one,
                found.active_peers,
                "" if found.majority else "; no majority (tie), nobody is asked to re-sync",
            )
        compared = next(a for a in actions if isinstance(a, act.ParamsCompared))
        if compared.resync:
            logger.warning(
                "peer %s holds other parameters than the majority at outer step %d: asked to re-sync to %s…",
                claims.peer_id,
                compared.outer_step,
                compared.majority[:12],
            )
        return pb.ReportOuterStepResponse(
            current_outer_step=self.engine.state.outer_step,
            resync=compared.resync,
            majority_sha256=bytes.fromhex(compared.majority),
        )

    async def _check_reachability(
        self, request: pb.CheckReachabilityRequest, claims: SessionClaims, context: grpc.aio.ServicerContext
    ) -> Message:
        seen = observed_host(context.peer())
        if not seen:
            raise check.InvalidArgument("CheckReachability works over TCP/IP only: this call has no IP address")
        host = request.host or seen
        if host != seen:
            raise check.InvalidArgument(
                f"host={request.host[:64]!r}: the coordinator dials back only the address your calls come from "
                f"({seen}); leave host empty, or check a forwarded port from outside yourself"
            )
        if not 0 < request.port <= 65535:
            raise check.InvalidArgument(f"port={request.port}: must be 1-65535 (the port the peer listens on)")
        secret = check.blob("probe_secret", request.probe_secret, max_bytes=MAX_SECRET_BYTES)
        if len(secret) < MIN_SECRET_BYTES:
            raise check.InvalidArgument(f"probe_secret has {len(secret)} bytes; send {MIN_SECRET_BYTES}-"
                                        f"{MAX_SECRET_BYTES} random bytes")
        detail = await dial_back(host, request.port, secret)
        address = format_address(host, request.port)
        logger.info("peer %s at %s is %s", claims.peer_id, address, f"unreachable: {detail}" if detail else "reachable")
        return pb.CheckReachabilityResponse(reachable=not detail, address=address, detail=detail)

    async def _leave(self, request: pb.LeaveRequest, claims: SessionClaims, _: Any) -> Message:
        reason = check.text("reason", request.reason, max_chars=check.MAX_REASON_CHARS)
        await self._submit(ev.PeerLeft(claims.peer_id))
        logger.info("peer %s left: %s", claims.peer_id, reason or "no reason given")
        return pb.LeaveResponse(peer_tokens_total=self.engine.state.peers[claims.peer_id].tokens)

    async def _get_status(self, request: pb.GetStatusRequest, claims: SessionClaims, _: Any) -> Message:
        snap = self.status.snapshot or self.status.refresh()
        return pb.GetStatusResponse(
            run_name=snap["run"]["name"],
            model_preset=snap["run"]["model_preset"],
            outer_step=snap["outer_step"],
            stage_index=snap["stage_index"],
            stage_name=snap["stage_name"],
            global_tokens=snap["global_tokens"],
            peers_by_state=snap["peers_by_state"],
            run_finished=snap["finished"],
            snapshot_json=self.status.snapshot_json.decode(),
        )


    # ------------------------------------------------------------------ trust

    def _authority_keys(self) -> list[bytes]:
        return [] if self.authority is None else [self.authority.public_key]

    def revoked_libp2p_ids(self) -> list[str]:
        """libp2p ids of banned peers and of peers whose join token was revoked (``token revoke``: their
        averaging credentials stop working with their sessions), sorted, at most ``MAX_REVOKED_IN_REPLY``;
        rebuilt at most every ``REVOKED_CACHE_S`` (heartbeats of thousands of peers must not each scan
        every peer) or when the revoked tokens change."""
        built_at, ids = self._revoked_cache
        now = self._monotonic()
        tokens = frozenset(self.revoked_token_ids)
        if now - built_at >= REVOKED_CACHE_S or tokens != self._revoked_cache_tokens:
            state = self.engine.state
            ids = sorted(
                lid
                for p in state.peers.values()
                if p.state is PeerState.BANNED or (p.token_id and p.token_id in tokens)
                for lid in p.libp2p_ids
            )[:MAX_REVOKED_IN_REPLY]
            self._revoked_cache, self._revoked_cache_tokens = (now, ids), tokens
        return ids

    def peers_taking_part(self) -> int:
        """Live sessions that are not idle (:data:`lila_net.phases.IDLE`), rebuilt with the step hashes."""
        return self._step_hashes()[2]

    def outer_step_sha256(self) -> str:
        """The majority hash of the run's outer step (per join token; :func:`coordinator.splits.step_majority`)."""
        return self._step_hashes()[0]

    def recent_step_hashes(self) -> list[pb.StepHash]:
        """The majority hashes of the run's kept steps up to its outer step (a download that finishes after
        the run moved on is still checked against its own step's)."""
        return [pb.StepHash(outer_step=step, sha256=sha256) for step, sha256 in self._step_hashes()[1]]

    def _step_hashes(self) -> tuple[str, tuple[tuple[int, str], ...], int]:
        """The three, rebuilt at most every ``REVOKED_CACHE_S`` like the ban list (every heartbeat asks) and
        after every ``ReportOuterStep``."""
        built_at, current, recent, taking_part = self._majority_cache
        now = self._monotonic()
        if now - built_at >= REVOKED_CACHE_S:
            state = self.engine.state
            current = splits.step_majority(state.splits, state.peers, state.outer_step)
            recent = tuple(
                (step, sha256)
                for step in sorted(state.splits.steps)
                if step <= state.outer_step and (sha256 := splits.step_majority(state.splits, state.peers, step))
            )
            taking_part = sum(1 for p in state.peers.values() if p.state in LIVE_STATES and p.phase != phases.IDLE)
            self._majority_cache = (now, current, recent, taking_part)
        return current, recent, taking_part

    async def _issue_credential(
        self, request: pb.IssueCredentialRequest, claims: SessionClaims, _: Any
    ) -> Message:
        if self.authority is None:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this coordinator issues no averaging credentials (started without an authority)",
            )
        libp2p_id = check.libp2p_id("libp2p_peer_id", request.libp2p_peer_id)
        public_key = check.blob("public_key", request.public_key, max_bytes=check.MAX_PUBLIC_KEY_BYTES)
        now = self._clock()
        try:  # check the key before recording anything: a wrong pair is the caller's error
            credential, issued = self.authority.issue(
                peer=claims.peer_id, libp2p_id=libp2p_id, public_key=public_key, now=now
            )
        except CredentialError as exc:
            raise check.InvalidArgument(str(exc)) from None
        await self._submit(ev.CredentialIssued(claims.peer_id, libp2p_id))
        return pb.IssueCredentialResponse(
            credential=credential,
            expires_at=issued.expires_at,
            ttl_s=self.authority.ttl_s,
            authority_public_keys=self._authority_keys(),
            revoked_libp2p_ids=self.revoked_libp2p_ids(),
        )

    async def _report_strike(self, request: pb.ReportStrikeRequest, claims: SessionClaims, _: Any) -> Message:
        round_index = check.count("round", request.round)
        check.text("group_id", request.group_id, max_chars=check.MAX_GROUP_ID_CHARS)
        if len(request.evidence) > check.MAX_EVIDENCE:
            raise check.InvalidArgument(
                f"evidence has {len(request.evidence)} entries; at most {check.MAX_EVIDENCE} per report"
            )
        evidence = tuple(
            ev.StrikeEvidence(
                libp2p_id=check.libp2p_id(f"evidence[{i}].libp2p_peer_id", item.libp2p_peer_id),
                reason=check.choice(f"evidence[{i}].reason", item.reason, check.STRIKE_REASONS),
                norm_ratio=check.number(f"evidence[{i}].norm_ratio", item.norm_ratio)
                if item.HasField("norm_ratio")
                else None,
                part=check.count(f"evidence[{i}].part", item.part),
            )
            for i, item in enumerate(request.evidence)
        )
        actions = await self._submit(ev.StrikeReported(claims.peer_id, round_index, evidence))
        recorded = [a for a in actions if isinstance(a, act.StrikeRecorded)]
        struck = [r for r in recorded if r.struck]
        for record in struck:
            logger.warning(
                "strike against peer %s (round %d, %s, %d witnesses): %d strikes%s",
                record.accused,
                record.round_index,
                record.reason,
                record.witnesses,
                record.strikes,
                ", banned" if record.banned else "",
            )
        self.metrics.observe_strikes(reports=len(recorded), strikes=len(struck))
        return pb.ReportStrikeResponse(
            outcomes=[
                pb.StrikeOutcome(
                    libp2p_peer_id=r.libp2p_id,
                    known=bool(r.accused),
                    witnesses=r.witnesses,
                    struck=r.struck,
                    strikes=r.strikes,
                    banned=r.banned,
                )
                for r in recorded
            ]
        )

    async def _report_claim(self, request: pb.ReportClaimRequest, claims: SessionClaims, _: Any) -> Message:
        """Check a forwarded state record's signature and credential (``lila_net.dht.evidence``), then let
        the core judge its claim (``coordinator.core``: a false claim bans its writer's token)."""
        # hivemind loads only when a record is checked (the coordinator may run without a DHT)
        from lila_net.dht.evidence import MAX_ENVELOPE_BYTES, SignedRecord, verify_state_claim
        from lila_net.dht.records import MAX_KEY_CHARS

        if self.authority is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           "this coordinator issues no averaging credentials, so no record can be checked")
        record = SignedRecord(
            key=check.text("key", request.key, max_chars=MAX_KEY_CHARS, required=True),
            writer=check.libp2p_id("writer", request.writer),
            envelope=check.blob("envelope", request.envelope, max_bytes=MAX_ENVELOPE_BYTES),
            expiration=check.number("expiration", request.expiration),
        )
        verifier = CredentialVerifier(self._authority_keys(), run=self.authority.run)
        try:
            claim = verify_state_claim(record, verifier, run_id=run_dht_id(self.authority.run))
        except ValueError as exc:  # RecordError, CredentialError: not a record of this run signed by its writer
            raise check.InvalidArgument(f"the forwarded record is not evidence: {exc}") from None
        actions = await self._submit(ev.ClaimReported(claims.peer_id, record.writer, claim.outer_step))
        judged = next(a for a in actions if isinstance(a, act.ClaimJudged))
        if any(isinstance(a, act.PeerStateChanged) for a in actions):  # banned by this report
            logger.warning("peer %s banned: %s", judged.accused, judged.detail)
        return pb.ReportClaimResponse(banned=judged.banned, claimed_step=claim.outer_step, detail=judged.detail)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _client_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's address without its port ("ipv4:203.0.113.5:4242" -> "ipv4:203.0.113.5")."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


async def start_grpc_server(
    service: CoordinatorService, *, host: str, port: int, tls: ServerTls | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start a ``grpc.aio`` server for ``service`` on ``host:port`` (0: any free port), over TLS with ``tls``;
    returns it and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", service.settings.coordinator.max_message_bytes),
            ("grpc.max_send_message_length", service.settings.coordinator.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((service.generic_handler(),))
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", tls.credentials())
    if bound == 0:
        raise OSError(
            f"cannot listen for gRPC on {host}:{port}: the address is in use or not local; pick another --grpc"
        )
    await server.start()
    return server, bound

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's side of the coordinator API (``lila.v1.Coordinator``), synchronous, with retries.

Every call after Join carries ``authorization: Bearer <session token>``. Calls that fail because the
coordinator is briefly away (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with
exponential backoff for up to ``retry_for_s``; progress reports carry a sequence number, so a report
retried after a lost reply is recognized by the coordinator and never credited twice. Any other error
is raised as :class:`CoordinatorError` with the coordinator's message, which says what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc

from lila_data import ResumePosition, ShardAddress
from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_net.tls import is_loopback

from .data_feed import Lease, LeaseLost
from .errors import Stopped

if TYPE_CHECKING:
    from lila_net.dht.evidence import SignedRecord

logger = logging.getLogger(__name__)

CLIENT_VERSION = "lila-peer/0.1.0"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
DEFAULT_DEADLINE_S = 10.0
DEFAULT_RETRY_FOR_S = 120.0
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0
LEASE_POLL_MAX_S = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


class CoordinatorError(RuntimeError):
    """The coordinator refused a call; ``code`` is the gRPC status, the message says what to do."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"coordinator refused: {code.name}: {message}")
        self.code = code
        self.details = message


class StoppedWaiting(CoordinatorError, Stopped):
    """The stop flag was set while a call waited to retry an unreachable coordinator: a clean stop (a
    :class:`~peer.errors.Stopped`) that callers catching :class:`CoordinatorError` still see as a failed call."""


def _position(p: pb.ResumePosition) -> ResumePosition:
    return ResumePosition(docs_consumed=int(p.docs_consumed), tokens_consumed=int(p.tokens_consumed))


def _position_pb(p: ResumePosition) -> pb.ResumePosition:
    return pb.ResumePosition(docs_consumed=p.docs_consumed, tokens_consumed=p.tokens_consumed)


@dataclass(frozen=True, kw_only=True)
class OuterStepAnswer:
    """The coordinator's answer to ReportOuterStep: the run's outer step, and whether this peer must re-sync
    to the parameters most peers hold for the step it reported (``majority_sha256``, hex; empty: none yet)."""

    current_outer_step: int
    resync: bool
    majority_sha256: str


class CoordinatorClient:
    """A session with one coordinator. Thread-safe: the heartbeat thread and the trainer share it."""

    def __init__(self, address: str, *, deadline_s: float = DEFAULT_DEADLINE_S,
                 retry_for_s: float = DEFAULT_RETRY_FOR_S, stop: threading.Event | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if credentials is None:
            if not is_loopback(address):
                logger.warning("the coordinator %s is dialed without TLS: the join token and session cross the "
                               "network unencrypted (join with --tls or --tls-ca if the coordinator serves TLS)",
                               address)
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._deadline_s = deadline_s
        self._retry_for_s = retry_for_s
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._session_token = ""
        self._report_seq = 0
        self.join_response: pb.JoinResponse | None = None
        self.run_finished = False  # set once the coordinator said every curriculum stage is done

    # ------------------------------------------------------------------ plumbing
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._session_token}"),) if self._session_token else ()

    def _call(self, name: str, fn: Callable[..., T], request: object, *, retry: bool = True) -> T:
        started = time.monotonic()
        backoff = BACKOFF_START_S
        while True:
            try:
                return fn(request, timeout=self._deadline_s, metadata=self._metadata())
            except grpc.RpcError as exc:
                code = exc.code()
                if not retry or code not in RETRYABLE or time.monotonic() - started > self._retry_for_s:
                    raise CoordinatorError(code, exc.details() or name) from None
                if self._stop.wait(backoff):
                    raise StoppedWaiting(code, f"{name}: stopping while the coordinator was unreachable") from None
                logger.warning("%s: %s (%s); retrying in %.1f s", name, code.name, exc.details(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _next_seq(self) -> int:
        with self._lock:
            self._report_seq += 1
            return self._report_seq

    # ------------------------------------------------------------------ session
    def join(self, *, join_token: str, peer_name: str, device_type: str, device_name: str, memory_bytes: int,
             cpu_cores: int, metrics_address: str = "") -> pb.JoinResponse:
        request = pb.JoinRequest(
            join_token=join_token, peer_name=peer_name, client_version=CLIENT_VERSION,
            metrics_address=metrics_address, previous_session_token=self._session_token,
            hardware=pb.Hardware(device_type=device_type, device_name=device_name, memory_bytes=memory_bytes,
                                 cpu_cores=cpu_cores),
        )
        response = self._call("Join", self._stub.Join, request)
        self._session_token = response.session_token
        self._report_seq = int(response.last_report_seq)
        self.join_response = response
        return response

    @property
    def peer_id(self) -> str:
        return self.join_response.peer_id if self.join_response else ""

    def heartbeat(self, phase: str) -> pb.HeartbeatResponse:
        return self._call("Heartbeat", self._stub.Heartbeat, pb.HeartbeatRequest(phase=phase))

    def report_metrics(self, **fields: float | int) -> None:
        self._call("ReportMetrics", self._stub.ReportMetrics, pb.ReportMetricsRequest(**fields), retry=False)

    def report_outer_step(self, outer_step: int, *, params_sha256: str, group_size: int,
                          group: Sequence[str] = ()) -> OuterStepAnswer:
        """Report a finished outer step with the hash of the parameters it produced (hex), the size of its
        averaging group and its members' libp2p ids; the answer says whether this peer's parameters agree
        with the majority's."""
        request = pb.ReportOuterStepRequest(outer_step=outer_step, params_sha256=bytes.fromhex(params_sha256),
                                            group_size=group_size, group_libp2p_ids=list(group))
        response = self._call("ReportOuterStep", self._stub.ReportOuterStep, request)
        return OuterStepAnswer(current_outer_step=int(response.current_outer_step), resync=bool(response.resync),
                               majority_sha256=bytes(response.majority_sha256).hex())

    def check_reachability(self, *, host: str, port: int, probe_secret: bytes) -> pb.CheckReachabilityResponse:
        """Ask the coordinator to dial this peer back at ``host:port`` (empty host: the address it sees);
        the dial can take the coordinator's whole dial timeout, so the deadline is the client's."""
        return self._call("CheckReachability", self._stub.CheckReachability,
                          pb.CheckReachabilityRequest(host=host, port=port, probe_secret=probe_secret))

    def leave(self, reason: str) -> None:
        """Tell the coordinator this peer leaves; nothing to say when it never joined (no session)."""
        if not self._session_token:
            return
        self._call("Leave", self._stub.Leave, pb.LeaveRequest(reason=reason), retry=False)

    def status(self, *, retry: bool = True) -> pb.GetStatusResponse:
        """The run's status; ``retry=False`` fails at once when the coordinator is away."""
        return self._call("GetStatus", self._stub.GetStatus, pb.GetStatusRequest(), retry=retry)

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------------ trust
    def issue_credential(self, libp2p_peer_id: str, public_key: bytes) -> pb.IssueCredentialResponse:
        """A coordinator-signed averaging credential for this libp2p identity.

        Raises ``PermissionError`` when the coordinator refuses the peer (banned or revoked), and
        ``CoordinatorError`` for anything else.
        """
        request = pb.IssueCredentialRequest(libp2p_peer_id=libp2p_peer_id, public_key=public_key)
        try:
            return self._call("IssueCredential", self._stub.IssueCredential, request)
        except CoordinatorError as exc:
            if exc.code is grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionError(str(exc)) from None
            raise

    def report_strike(self, request: pb.ReportStrikeRequest) -> pb.ReportStrikeResponse:
        """Send one strike report. Not retried: a lost report only delays a ban."""
        return self._call("ReportStrike", self._stub.ReportStrike, request, retry=False)

    def report_claim(self, record: SignedRecord) -> pb.ReportClaimResponse:
        """Forward a DHT state record announcing a false outer step (signed by its writer). Not retried."""
        request = pb.ReportClaimRequest(key=record.key, writer=record.writer, envelope=record.envelope,
                                        expiration=record.expiration)
        response = self._call("ReportClaim", self._stub.ReportClaim, request, retry=False)
        logger.warning("reported %s's announcement of outer step %d: %s", record.writer, response.claimed_step,
                       response.detail)
        return response

    # ------------------------------------------------------------------ leases (peer.data_feed.LeaseClient)
    def lease(self, *, wait: bool = True) -> Lease | None:
        """A lease; None when the run is finished (:attr:`run_finished` is then set), the peer is stopping,
        or — with ``wait=False`` — when no shard is free right now (every one is leased to others)."""
        while not self._stop.is_set():
            response = self._call("LeaseShard", self._stub.LeaseShard, pb.LeaseShardRequest())
            if response.granted:
                msg = response.lease
                shard = ShardAddress(source=msg.shard.source, file=msg.shard.file,
                                     row_start=int(msg.shard.row_start), row_stop=int(msg.shard.row_stop))
                return Lease(lease_id=msg.lease_id, shard=shard, position=_position(msg.position),
                             stage_index=int(msg.stage_index), seq_len=int(msg.seq_len),
                             doc_filter=msg.doc_filter or None)
            if response.run_finished:
                self.run_finished = True
                return None
            if not wait:
                return None
            pause = min(max(response.retry_after_s, BACKOFF_START_S), LEASE_POLL_MAX_S)
            logger.info("no shard for now (%s); asking again in %.1f s", response.reason, pause)
            self._stop.wait(pause)
        return None

    def _report(self, name: str, fn: Callable[..., T], request: object) -> T:
        try:
            return self._call(name, fn, request)
        except CoordinatorError as exc:
            if exc.code is grpc.StatusCode.FAILED_PRECONDITION:  # the lease is not ours any more
                raise LeaseLost(str(exc)) from None
            raise

    def report_progress(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        self._report("ReportProgress", self._stub.ReportProgress, pb.ReportProgressRequest(
            lease_id=lease.lease_id, report_seq=self._next_seq(), position=_position_pb(position)))

    def complete(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        self._report("CompleteShard", self._stub.CompleteShard, pb.CompleteShardRequest(
            lease_id=lease.lease_id, report_seq=self._next_seq(), position=_position_pb(position)))

    def release(self, lease: Lease, position: ResumePosition, tokens: int) -> None:
        self._report("ReleaseShard", self._stub.ReleaseShard, pb.ReleaseShardRequest(
            lease_id=lease.lease_id, report_seq=self._next_seq(), position=_position_pb(position)))

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Fuzzing the coordinator's request handlers through its real gRPC server: thousands of random byte strings
and random field values, sent to every method with and without a valid session. Each call ends with a
status a peer can act on (never INTERNAL or UNKNOWN) and a message, and the server keeps serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.server import SERVICE_NAME, start_grpc_server
from coordinator.settings import ServerSettings
from coordinator.storage import Storage
from lila_net.proto import coordinator_pb2 as pb
from tests.helpers.coordinator_service import in_process_service

METHODS = {
    "Join": pb.JoinRequest,
    "Heartbeat": pb.HeartbeatRequest,
    "LeaseShard": pb.LeaseShardRequest,
    "ReportProgress": pb.ReportProgressRequest,
    "CompleteShard": pb.CompleteShardRequest,
    "ReleaseShard": pb.ReleaseShardRequest,
    "ReportMetrics": pb.ReportMetricsRequest,
    "ReportOuterStep": pb.ReportOuterStepRequest,
    "Leave": pb.LeaveRequest,
    "GetStatus": pb.GetStatusRequest,
    "IssueCredential": pb.IssueCredentialRequest,
    "ReportStrike": pb.ReportStrikeRequest,
}
ANSWERABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
MAX_MESSAGE_BYTES = 64 * 1024
RPC_TIMEOUT_S = 10.0
RAW_EXAMPLES = 1500
FIELD_EXAMPLES = 1500
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            "derandomize": True}


class Server:
    """A coordinator service in a background event loop, with a synchronous raw-bytes client."""

    def __init__(self, path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.storage = Storage(path)
        settings = ServerSettings.of(
            rate_limit_per_s=1e9, rate_limit_burst=10**9, join_rate_limit_per_s=1e9, join_rate_limit_burst=10**9,
            max_message_bytes=MAX_MESSAGE_BYTES, lease_timeout_s=1e6,
        )
        built = in_process_service(self.storage, settings, run="fuzz", description="[run]\nname = 'fuzz'\n")
        self.engine, self.token, self.service = built.engine, built.token, built.service
        self.server, port = self._run(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.calls = {
            name: self.channel.unary_unary(f"/{SERVICE_NAME}/{name}", request_serializer=None, response_deserializer=None)
            for name in METHODS
        }
        joined = pb.JoinResponse.FromString(
            self.calls["Join"](pb.JoinRequest(join_token=self.token, peer_name="fuzzer").SerializeToString())
        )
        self.session = (("authorization", f"Bearer {joined.session_token}"),)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _start(self):
        await self.engine.start()
        return await start_grpc_server(self.service, host="127.0.0.1", port=0)

    def call(self, name: str, raw: bytes, *, session: bool) -> tuple[grpc.StatusCode, str]:
        try:
            self.calls[name](raw, metadata=self.session if session else (), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    def close(self) -> None:
        self.channel.close()

        async def stop():
            await self.server.stop(None)
            await self.engine.stop()

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.storage.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("fuzz") / "run.db")
    yield running
    running.close()


def _answered(server: Server, name: str, raw: bytes, session: bool) -> None:
    code, details = server.call(name, raw, session=session)
    assert code in ANSWERABLE, (name, code, details)
    if code is not grpc.StatusCode.OK:
        assert details, (name, code)


@settings(max_examples=RAW_EXAMPLES, **SETTINGS)
@given(name=st.sampled_from(sorted(METHODS)), raw=st.binary(max_size=2048), session=st.booleans())
def test_random_bytes_get_a_clear_status(server: Server, name: str, raw: bytes, session: bool) -> None:
    _answered(server, name, raw, session)


INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.one_of(st.text(max_size=80), st.text(alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabc", min_size=20, max_size=60))
FLOAT = st.floats(allow_nan=True, allow_infinity=True)
POSITION = st.builds(pb.ResumePosition, docs_consumed=INT64, tokens_consumed=INT64)


def _requests() -> dict[str, st.SearchStrategy]:
    lease = st.one_of(TEXT, st.sampled_from(["L1", "L2", "L3"]))
    evidence = st.builds(
        pb.StrikeEvidence, libp2p_peer_id=TEXT, reason=st.one_of(TEXT, st.sampled_from(["norm_ratio", "non_finite"])),
        norm_ratio=FLOAT, part=st.integers(-(2**31), 2**31 - 1),
    )
    return {
        "Join": st.builds(
            pb.JoinRequest, join_token=TEXT, peer_name=TEXT, client_version=TEXT, metrics_address=TEXT,
            previous_session_token=TEXT,
            hardware=st.builds(pb.Hardware, device_type=TEXT, device_name=TEXT, memory_bytes=INT64,
                               cpu_cores=st.integers(-(2**31), 2**31 - 1)),
        ),
        "Heartbeat": st.builds(pb.HeartbeatRequest, phase=TEXT),
        "LeaseShard": st.just(pb.LeaseShardRequest()),
        "ReportProgress": st.builds(
            pb.ReportProgressRequest, lease_id=lease, report_seq=st.integers(0, 2**64 - 1), position=POSITION
        ),
        "CompleteShard": st.builds(
            pb.CompleteShardRequest, lease_id=lease, report_seq=st.integers(0, 2**64 - 1), position=POSITION
        ),
        "ReleaseShard": st.builds(
            pb.ReleaseShardRequest, lease_id=lease, report_seq=st.integers(0, 2**64 - 1), position=POSITION
        ),
        "ReportMetrics": st.builds(
            pb.ReportMetricsRequest, outer_step=INT64, loss=FLOAT, val_bpb=FLOAT, tokens_per_s=FLOAT,
            tokens_processed=INT64, bytes_sent=INT64, bytes_received=INT64,
        ),
        "ReportOuterStep": st.builds(pb.ReportOuterStepRequest, outer_step=INT64),
        "GetStatus": st.just(pb.GetStatusRequest()),
        "IssueCredential": st.builds(pb.IssueCredentialRequest, libp2p_peer_id=TEXT, public_key=st.binary(max_size=3000)),
        "ReportStrike": st.builds(
            pb.ReportStrikeRequest, round=INT64, group_id=TEXT, evidence=st.lists(evidence, max_size=70)
        ),
    }


REQUESTS = _requests()


@settings(max_examples=FIELD_EXAMPLES, **SETTINGS)
@given(data=st.data(), session=st.booleans())
def test_random_field_values_get_a_clear_status(server: Server, data: st.DataObject, session: bool) -> None:
    name = data.draw(st.sampled_from(sorted(REQUESTS)))
    request = data.draw(REQUESTS[name])
    _answered(server, name, request.SerializeToString(), session)


def test_server_keeps_serving_and_refuses_oversize_requests(server: Server) -> None:
    code, details = server.call("Heartbeat", b"\x0a" + b"\xff" * MAX_MESSAGE_BYTES, session=True)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and details
    code, _ = server.call("GetStatus", b"", session=True)
    assert code is grpc.StatusCode.OK
    assert server.service.metrics.render().count(b'code="INTERNAL"') == 0

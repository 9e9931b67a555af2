# SPDX-License-Identifier: AGPL-3.0-or-later
"""Serving and downloading the current training state between peers.

A donor :meth:`StateSync.publish`-es a snapshot after each outer step (packed once, so every download
gets the same consistent bytes) and announces itself under ``lila/{run}/state`` with its outer step.
A joiner lists the donors (highest outer step first) and downloads from one after another until one
delivers a payload whose sha256, table and shapes check out, all within ``total_timeout``. A donor that
leaves mid-transfer costs at most ``chunk_timeout`` before the next one is tried. Requests carry the
caller's credential and are refused before anything else is read when it is not authorized.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lila_net.dht.evidence import SignedRecord
from lila_net.dht.keys import check_run_id, protocol, state_key
from lila_net.dht.records import MAX_STATE_RECORD_BYTES
from peer.averaging.auth import Authorize
from peer.averaging.config import StateSyncConfig
from peer.averaging.matchmaking import is_peer_id
from peer.averaging.rpc import Endpoint, Refused, Reply, serve
from peer.averaging.state_format import (
    StateSnapshot,
    check_table,
    max_packed_nbytes,
    pack_state,
    unpack_state,
)
from peer.averaging.transport import Transport
from peer.averaging.wire import (
    KIND_REPLY,
    KIND_REQUEST,
    Frame,
    Limits,
    read_frame,
    read_payload_chunks,
    require,
    write_frame,
)

logger = logging.getLogger(__name__)

ANNOUNCE_LIFETIMES = 3  # an announcement outlives this many announce periods
ERR_NO_STATE = "no_state"


class StateSyncError(RuntimeError):
    """No donor delivered a valid state; the message lists every donor tried and what went wrong."""


@dataclass(frozen=True)
class Donor:
    peer_id: str
    outer_step: int
    record: SignedRecord | None = field(default=None, compare=False, repr=False)  # its signed announcement


@dataclass
class DownloadResult:
    snapshot: StateSnapshot
    donor: str
    failed_donors: list[tuple[str, str]] = field(default_factory=list)  # (peer id, what went wrong)
    bytes_received: int = 0
    duration_s: float = 0.0


ProgressCallback = Callable[[str, int, int], None]
"""``on_progress(donor_peer_id, bytes_received, total_bytes)``, called on the transport loop per chunk."""


class StateSync:
    """One peer's state serving and downloading for a run (blocking methods; not from the loop thread)."""

    def __init__(
        self,
        transport: Transport,
        *,
        run_id: str,
        credential: bytes,
        authorize: Authorize,
        config: StateSyncConfig | None = None,
    ) -> None:
        self.transport = transport
        self.run_id = check_run_id(run_id)
        self.config = config or StateSyncConfig()
        self.endpoint = Endpoint(transport, credential, authorize)
        self._served: tuple[dict[str, Any], bytes] | None = None
        self._announce_task: concurrent.futures.Future | None = None

    async def _start_serving(self) -> None:
        limits = Limits(self.config.max_credential_bytes, self.config.max_table_bytes, 0)
        await serve(
            self.endpoint,
            protocol(self.run_id, "state"),
            self._on_request,
            limits=limits,
            read_timeout=self.config.request_timeout,
        )

    def set_credential(self, credential: bytes) -> None:
        """Present ``credential`` from now on (after the coordinator renewed it)."""
        self.endpoint.credential = bytes(credential)

    # ------------------------------------------------------------------ donor side

    def publish(self, snapshot: StateSnapshot) -> None:
        """Serve ``snapshot`` from now on (packed here, in the caller's thread) and announce it.

        ``snapshot.metadata["outer_step"]`` (int) orders donors; the tensors are copied into the packed
        payload, so the caller may keep training right after this returns.
        """
        outer_step = snapshot.metadata.get("outer_step")
        if not isinstance(outer_step, int) or isinstance(outer_step, bool) or outer_step < 0:
            raise ValueError("snapshot.metadata['outer_step'] must be an int >= 0 (donors are ordered by it)")
        self._served = pack_state(snapshot)
        if self._announce_task is None:  # first publication: start serving (a downloader needs no handler)
            self.transport.run(self._start_serving(), timeout=self.config.request_timeout)
            self._announce_task = self.transport.submit(self._announce_forever())
        self.transport.run(
            self._announce_now(outer_step), timeout=self.config.request_timeout + self.config.announce_period
        )

    async def _announce_now(self, outer_step: int) -> None:
        value = json.dumps({"outer_step": outer_step}).encode()
        expiration = self.transport.now() + ANNOUNCE_LIFETIMES * self.config.announce_period
        await self.transport.dht_store(state_key(self.run_id), self.transport.peer_id, value, expiration)

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.announce_period)
            if self._served is not None:
                try:
                    await self._announce_now(int(self._served[0]["metadata"]["outer_step"]))
                except Exception:
                    logger.warning("could not re-announce the state", exc_info=True)

    async def _on_request(self, peer_id: str, frame: Frame) -> Reply:
        if require(frame.header, "run", str) != self.run_id:
            raise Refused("wrong_run", f"this peer serves run {self.run_id!r}")
        served = self._served
        if served is None:
            raise Refused(ERR_NO_STATE, "this peer has no state to serve yet")
        header, payload = served
        logger.info("serving %d bytes of state to %s", len(payload), peer_id)
        return Reply(header=header, payload=payload, max_bytes_per_s=self.config.max_upload_bytes_per_s)

    # ------------------------------------------------------------------ downloader side
    def find_donors(self) -> list[Donor]:
        """Announced donors other than this peer, highest outer step first (ties: by peer id)."""
        return self.transport.run(self.find_donors_async(), timeout=self.config.request_timeout * 2)

    async def find_donors_async(self) -> list[Donor]:
        records = await self.transport.dht_get_signed(state_key(self.run_id))
        donors = []
        for peer, (value, signed) in records.items():
            if peer == self.transport.peer_id or not is_peer_id(peer) or len(value) > MAX_STATE_RECORD_BYTES:
                continue
            try:
                step = json.loads(value.decode()).get("outer_step")
            except (ValueError, AttributeError):
                continue
            if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
                donors.append(Donor(peer, step, signed))
        return sorted(donors, key=lambda donor: (-donor.outer_step, donor.peer_id))

    def download(
        self,
        *,
        donors: Sequence[str] | None = None,
        expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download and verify the state, trying ``donors`` (peer ids, default :meth:`find_donors`) in
        order. Raises StateSyncError when none delivers within ``total_timeout``."""
        coro = self.download_async(donors=donors, expected_shapes=expected_shapes, on_progress=on_progress)
        return self.transport.run(coro, timeout=self.config.total_timeout + self.config.request_timeout)

    async def download_async(
        self,
        *,
        donors: Sequence[str] | None = None,
        expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.total_timeout
        if donors is None:
            donors = [donor.peer_id for donor in await self.find_donors_async()]
        if not donors:
            raise StateSyncError(
                f"no peer announces state for run {self.run_id!r}; wait for a donor or start one"
            )
        failures: list[tuple[str, str]] = []
        for donor in donors:
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append((donor, "not tried: total_timeout reached"))
                continue
            try:
                snapshot, received = await asyncio.wait_for(
                    self._download_from(donor, expected_shapes, on_progress), timeout=remaining
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("state download from %s failed: %r; trying the next donor", donor, error)
                failures.append((donor, repr(error)))
                continue
            return DownloadResult(snapshot, donor, failures, received, loop.time() - started)
        raise StateSyncError(
            "no donor delivered a valid state: " + "; ".join(f"{peer}: {why}" for peer, why in failures)
        )

    async def _download_from(
        self,
        donor: str,
        expected_shapes: Mapping[str, tuple[int, ...]] | None,
        on_progress: ProgressCallback | None,
    ) -> tuple[StateSnapshot, int]:
        cfg = self.config
        max_payload = cfg.max_state_bytes
        if expected_shapes is not None:  # our own model's state bounds what a donor may announce
            max_payload = min(max_payload, max_packed_nbytes(expected_shapes))
        limits = Limits(cfg.max_credential_bytes, cfg.max_table_bytes, max_payload)
        reader, writer = await asyncio.wait_for(
            self.transport.open_stream(donor, protocol(self.run_id, "state")), timeout=cfg.request_timeout
        )
        try:
            await write_frame(
                writer, kind=KIND_REQUEST, credential=self.endpoint.credential, header={"run": self.run_id}
            )
            frame, prefix = await asyncio.wait_for(
                read_frame(
                    reader,
                    peer_id=donor,
                    authorize=self.endpoint.authorize,
                    limits=limits,
                    expect=KIND_REPLY,
                    read_payload=False,
                ),
                timeout=cfg.request_timeout,
            )
            total = prefix.payload_len
            check_table(frame.header, total, expected_shapes=expected_shapes)  # before any payload byte

            def _progress(received: int) -> None:
                if on_progress is not None:
                    on_progress(donor, received, total)

            payload = await read_payload_chunks(
                reader, total, chunk_timeout=cfg.chunk_timeout, on_chunk=_progress
            )
        finally:
            writer.close()
        loop = asyncio.get_running_loop()
        snapshot = await loop.run_in_executor(
            None, lambda: unpack_state(frame.header, payload, expected_shapes=expected_shapes)
        )
        return snapshot, frame.wire_bytes + len(payload)

    def shutdown(self) -> None:
        """Stop serving and announcing (the transport stays up)."""
        if self._announce_task is None:
            return
        self._announce_task.cancel()
        self._announce_task = None
        if self.transport.is_alive:
            self.transport.run(
                self.transport.remove_handler(protocol(self.run_id, "state")),
                timeout=self.config.request_timeout,
            )

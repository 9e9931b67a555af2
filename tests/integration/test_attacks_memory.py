# SPDX-License-Identifier: AGPL-3.0-or-later
"""Memory-exhaustion attacks by a peer that holds a valid averaging credential (one join token).

Each test performs the attack: a forged part payload through the decode path every owner runs, and a
lying state donor and a stalled caller over real hivemind transports on 127.0.0.1. Memory is measured
with tracemalloc (every Python-level allocation of the process, the transport loop's thread included):
an allocation sized by what the attacker ANNOUNCED shows up there whole.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lila_codec import CodecError, get_codec
from lila_net.dht.keys import protocol
from peer.averaging import StaticTokenAuthorizer, Transport
from peer.averaging.allreduce import decode_part
from peer.averaging.config import MIB, AveragingConfig, StateSyncConfig
from peer.averaging.state_format import StateSnapshot
from peer.averaging.state_sync import StateSync, StateSyncError
from peer.averaging.wire import (
    KIND_REPLY,
    KIND_REQUEST,
    MAGIC,
    PREFIX,
    VERSION,
    Limits,
    RemoteError,
    encode_header,
    read_frame,
)
from tests.helpers.transports import local_transports

pytestmark = pytest.mark.timeout(180)

RUN_ID = "attacks"
GOOD = b"good-token"
ANNOUNCED = 256 * MIB  # what the lying donor announces
SENT = 1 * MIB  # what it actually sends before stalling
PEAK_BOUND = 16 * MIB  # Python allocations allowed during a refused or stalled download
PART_NUMEL = 100_000
FORGED_FACTOR = 15


class CountingCodec:
    """A real codec that counts the payloads it was asked to decode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.decoded = 0

    def encode(self, tensor: torch.Tensor, *, seed: int = 0) -> bytes:
        return self.inner.encode(tensor, seed=seed)

    def decode(self, payload: bytes) -> torch.Tensor:
        self.decoded += 1
        return self.inner.decode(payload)


def test_forged_part_element_count_is_refused_before_decoding() -> None:
    """A 2-bit e8 payload declaring 15x the part's values fits the part's byte limit; decoding it would
    allocate float32 buffers (and the lattice decoder's intermediates) for 15x the part."""
    forged = get_codec("e8", bits=2, block=256).encode(
        torch.randn(FORGED_FACTOR * PART_NUMEL, generator=torch.Generator().manual_seed(0)), seed=1
    )
    assert len(forged) == 386_824 <= AveragingConfig().max_part_payload(PART_NUMEL) == 465_536
    codec = CountingCodec(get_codec("e8", bits=4))
    with pytest.raises(ValueError) as refused:
        decode_part(codec, forged, PART_NUMEL)
    assert str(refused.value) == "part payload declares 1500000 values, the part has 100000: refused undecoded"
    assert codec.decoded == 0
    with pytest.raises(CodecError, match="payload declares 1500000 elements, the receiver expects 100000"):
        codec.inner.decode(forged, expected_numel=PART_NUMEL)
    honest = codec.encode(torch.ones(PART_NUMEL), seed=2)
    assert torch.equal(decode_part(codec, honest, PART_NUMEL), codec.inner.decode(honest))  # [100000]
    assert codec.decoded == 1


# ============================================================================ over real transports
@pytest.fixture(scope="module")
def pair() -> Iterator[list[Transport]]:
    with local_transports(2) as started:
        yield started


def _lying_reply(payload_len: int, numel: int) -> bytes:
    """A well-formed REPLY prefix + credential + table announcing one float32 tensor of ``numel`` values
    in ``payload_len`` bytes."""
    table = {
        "metadata": {"outer_step": 7},
        "tensors": [{"name": "w", "dtype": "float32", "shape": [numel], "offset": 0, "nbytes": 4 * numel}],
        "total_bytes": payload_len,
        "sha256": "0" * 64,
    }
    header = encode_header(table)
    return PREFIX.pack(MAGIC, VERSION, KIND_REPLY, len(GOOD), len(header), payload_len) + GOOD + header


def _serve_lies(transport: Transport, payload_len: int, numel: int) -> None:
    async def lie(_peer: str, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_lying_reply(payload_len, numel))
        writer.write(bytes(SENT))
        await writer.drain()
        await asyncio.sleep(60)  # stall: a donor that announced far more than it sends

    transport.run(transport.remove_handler(protocol(RUN_ID, "state")), timeout=10)
    transport.run(transport.add_handler(protocol(RUN_ID, "state"), lie), timeout=10)


def _download_peak(sync: StateSync, donor: str, **kwargs: Any) -> tuple[str, int]:
    tracemalloc.start()
    try:
        with pytest.raises(StateSyncError) as refused:
            sync.download(donors=[donor], **kwargs)
        return str(refused.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _downloader(transport: Transport) -> StateSync:
    config = StateSyncConfig(request_timeout=2.0, chunk_timeout=1.0, total_timeout=10.0)
    return StateSync(transport, run_id=RUN_ID, credential=GOOD, authorize=StaticTokenAuthorizer([GOOD]), config=config)


def test_state_announcement_larger_than_our_own_state_is_refused_unread(pair: list[Transport]) -> None:
    """The joiner knows its model: a state of one [1000] tensor packs to at most 8 * 1000 + 64 bytes, so
    an announcement of 256 MiB is refused from the frame prefix, before anything is allocated for it."""
    donor, joiner = pair
    _serve_lies(donor, ANNOUNCED, ANNOUNCED // 4)
    why, peak = _download_peak(_downloader(joiner), donor.peer_id, expected_shapes={"w": (1000,)})
    assert "payload of 268435456 bytes exceeds 8064" in why
    assert peak < PEAK_BOUND


def test_state_buffer_grows_with_the_bytes_received_not_the_announcement(pair: list[Transport]) -> None:
    """Without expected shapes the limit is ``max_state_bytes`` (32 GiB); a donor announcing 256 MiB and
    sending 1 MiB must cost the joiner about 1 MiB, not 256 MiB, before the chunk timeout drops it."""
    donor, joiner = pair
    _serve_lies(donor, ANNOUNCED, ANNOUNCED // 4)
    why, peak = _download_peak(_downloader(joiner), donor.peer_id)
    assert "TimeoutError" in why
    assert SENT <= peak < PEAK_BOUND


def test_stalled_request_is_answered_with_timeout_at_its_deadline(pair: list[Transport]) -> None:
    """A caller that sends half a frame prefix and stalls gets a ``timeout`` ERROR frame after the server's
    ``read_timeout`` (the state server uses ``request_timeout`` = 1 s) instead of holding the stream."""
    donor, caller = pair
    server = StateSync(
        donor,
        run_id=RUN_ID,
        credential=GOOD,
        authorize=StaticTokenAuthorizer([GOOD]),
        config=StateSyncConfig(request_timeout=1.0),
    )
    donor.run(donor.remove_handler(protocol(RUN_ID, "state")), timeout=10)  # the lying handler
    server.publish(StateSnapshot({"w": torch.zeros(4)}, {"outer_step": 1}))

    async def stall() -> tuple[str, float]:
        reader, writer = await caller.open_stream(donor.peer_id, protocol(RUN_ID, "state"))
        started = time.monotonic()
        writer.write(PREFIX.pack(MAGIC, VERSION, KIND_REQUEST, len(GOOD), 2, 0)[:10])
        await writer.drain()
        try:
            await read_frame(reader, peer_id=donor.peer_id, authorize=lambda *_: True,
                             limits=Limits(4096, 65536, 0), expect=KIND_REPLY)
        except RemoteError as error:
            return error.code, time.monotonic() - started
        finally:
            writer.close()
        return "replied", time.monotonic() - started

    try:
        code, waited = caller.run(asyncio.wait_for(stall(), timeout=6.0), timeout=10)
    finally:
        server.shutdown()
    assert code == "timeout"
    assert 1.0 <= waited < 3.0

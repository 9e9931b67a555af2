# SPDX-License-Identifier: AGPL-3.0-or-later
"""The dial-back reachability check: the coordinator's parsing and dialing, and the peer's whole check
through the real gRPC service on 127.0.0.1 (peer.reachability)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from coordinator.reachability import dial_back, observed_host
from coordinator.settings import ServerSettings
from coordinator.storage import Storage
from peer.coordinator_client import CoordinatorClient, CoordinatorError
from peer.reachability import CLIENT, DIRECT, ProbeListener, check_reachability, parse_announce
from tests.helpers.coordinator_service import in_process_service

SECRET = b"s" * 32


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:203.0.113.5:4242", "203.0.113.5"),
    ("ipv6:[::1]:4242", "::1"),
    ("ipv6:%5B::ffff:10.0.0.2%5D:4242", "10.0.0.2"),
    ("unix:/tmp/sock", ""),
    ("ipv4:not-an-ip:1", ""),
    (None, ""),
])
def test_observed_host(peer, host):
    assert observed_host(peer) == host


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dial_back_reads_the_secret_and_names_what_went_wrong():
    with ProbeListener(host="127.0.0.1", port=0, secret=SECRET) as probe:
        assert asyncio.run(dial_back("127.0.0.1", probe.port, SECRET)) == ""
        assert asyncio.run(dial_back("127.0.0.1", probe.port, b"t" * 32)) == (
            "another program answered on that port (wrong probe secret)")
        assert probe.connections == 2
    assert asyncio.run(dial_back("127.0.0.1", _closed_port(), SECRET)) == "Connection refused"


def test_parse_announce():
    assert parse_announce("203.0.113.7:31337") == ("203.0.113.7", 31337)
    assert parse_announce("[2001:db8::1]:4000") == ("2001:db8::1", 4000)
    for bad in ("203.0.113.7", "host:0", ":80", "host:port"):
        with pytest.raises(ValueError, match="--announce"):
            parse_announce(bad)


def test_the_peers_check_through_the_coordinator(tmp_path):
    built = in_process_service(Storage(tmp_path / "run.db"), ServerSettings.of(), run="r")

    async def scenario():
        async with built.serving() as address:
            client = CoordinatorClient(address, retry_for_s=0.0)
            try:
                joined = await asyncio.to_thread(client.join, join_token=built.token, peer_name="a",
                                                 device_type="cpu", device_name="", memory_bytes=0, cpu_cores=1)
                reachable = await asyncio.to_thread(check_reachability, client, host="127.0.0.1", port=0,
                                                    announce=None, client_mode=False,
                                                    observed_host=joined.observed_host)
                port = _closed_port()
                refused = await asyncio.to_thread(client.check_reachability, host="", port=port,
                                                  probe_secret=SECRET)
                client_mode = await asyncio.to_thread(check_reachability, client, host="0.0.0.0", port=0,
                                                      announce=None, client_mode=True, observed_host="127.0.0.1")
                with pytest.raises(CoordinatorError, match="dials back only the address your calls come from"):
                    await asyncio.to_thread(client.check_reachability, host="192.0.2.1", port=port,
                                            probe_secret=SECRET)
                with pytest.raises(CoordinatorError, match="probe_secret has 3 bytes"):
                    await asyncio.to_thread(client.check_reachability, host="", port=port, probe_secret=b"abc")
            finally:
                client.close()
            return joined, reachable, refused, port, client_mode

    joined, reachable, refused, port, client_mode = asyncio.run(scenario())
    assert joined.observed_host == "127.0.0.1"
    assert reachable.mode == DIRECT
    (listen,), (announced,) = reachable.listen_maddrs, reachable.announce_maddrs
    assert listen.startswith("/ip4/127.0.0.1/tcp/") and announced == listen  # checked address, same port
    assert (refused.reachable, refused.address, refused.detail) == (False, f"127.0.0.1:{port}", "Connection refused")
    assert client_mode.mode == CLIENT and client_mode.announce_maddrs == ()

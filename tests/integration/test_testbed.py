# SPDX-License-Identifier: AGPL-3.0-or-later
"""The namespace testbed (lila_run.testbed) with real namespaces: NAT hides home hosts, public hosts reach
each other, tbf shapes each direction, and every way out of a testbed (close, exception, SIGTERM, a
SIGKILLed owner plus cleanup_stale) leaves no namespace and no process behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from lila_run.testbed import MARKER_DIR, Testbed, TestbedError, cleanup_stale, parse_rate
from tests.helpers import testbed as testbed_helpers
from tests.helpers.testbed import (
    netprobe,
    read_line,
    require_testbed,
    server_result,
    start_server,
    try_connect,
)

PORT = 7100
BLOCKED_TIMEOUT_S = 1.5


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix))


def _mbit_s(result: dict) -> float:
    moved = result.get("received", 0)
    return moved * 8 / result["seconds"] / 1e6


def test_parse_rate_accepts_tc_rates_and_names_bad_values() -> None:
    assert parse_rate("20mbit") == 20_000_000
    assert parse_rate("1.5Mbit") == 1_500_000
    assert parse_rate("512kbit") == 512_000
    assert parse_rate("1gbit") == 1_000_000_000
    for bad in ("20mb", "20", "fast", "0mbit", "-5mbit", 20):
        with pytest.raises(ValueError, match=r"uplink .* is not a rate: use a tc rate string such as '20mbit'"):
            parse_rate(bad, what="uplink")  # type: ignore[arg-type]


def test_require_testbed_skips_or_fails_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(testbed_helpers, "available", lambda: "not root")
    monkeypatch.delenv("LILA_REQUIRE_TESTBED", raising=False)
    with pytest.raises(pytest.skip.Exception, match="namespace testbed unavailable: not root"):
        require_testbed()
    monkeypatch.setenv("LILA_REQUIRE_TESTBED", "1")
    with pytest.raises(pytest.fail.Exception, match=r"LILA_REQUIRE_TESTBED=1 but .*: not root"):
        require_testbed()


def test_bad_rate_or_name_creates_nothing(testbed: Testbed) -> None:
    before = _namespaces(testbed.prefix)
    with pytest.raises(ValueError, match=r"downlink '100 mbps'"):
        testbed.add_home_host("bob", downlink="100 mbps")
    with pytest.raises(ValueError, match=r"host name 'Bad_Name'"):
        testbed.add_public_host("Bad_Name")
    assert _namespaces(testbed.prefix) == before == [testbed.internet]
    assert testbed.hosts == {}


def test_home_host_is_seen_as_its_routers_public_address(testbed: Testbed) -> None:
    coord = testbed.add_public_host("coord")
    bob = testbed.add_home_host("bob")
    assert (coord.address, coord.public_address, coord.nat) == ("10.200.0.10", "10.200.0.10", False)
    assert (bob.address, bob.public_address, bob.nat) == ("192.168.1.2", "10.200.0.101", True)
    assert bob.netns == f"{testbed.prefix}bob" and bob.router_netns == f"{testbed.prefix}bob-nat"
    server = start_server(testbed, coord, PORT)
    testbed.run(bob, netprobe("send", "--host", coord.address, "--port", PORT, "--bytes", 1000),
                timeout=20, check=True)
    assert server_result(server) == {"peer": "10.200.0.101", "received": 1000,
                                     "seconds": pytest.approx(0, abs=1)}


def test_nothing_reaches_a_home_host_from_the_internet(testbed: Testbed) -> None:
    coord = testbed.add_public_host("coord")
    bob = testbed.add_home_host("bob")
    start_server(testbed, bob, PORT)
    # the server is up and reachable from its own LAN side...
    assert try_connect(testbed, bob, bob.address, PORT, timeout_s=5).returncode == 0
    # ...but not from the internet: no route to the private address,
    no_route = try_connect(testbed, coord, bob.address, PORT, timeout_s=BLOCKED_TIMEOUT_S)
    assert no_route.returncode == 1 and "Network is unreachable" in no_route.stdout
    # nor through the router when a hostile host routes the LAN via it (forward policy drop),
    testbed.run(coord, ["ip", "route", "add", "192.168.1.0/24", "via", bob.public_address],
                timeout=10, check=True)
    via_router = try_connect(testbed, coord, bob.address, PORT, timeout_s=BLOCKED_TIMEOUT_S)
    assert via_router.returncode == 1 and "timed out" in via_router.stdout
    # nor at the router's public address on the same port (input policy drop, no port forwarding).
    at_router = try_connect(testbed, coord, bob.public_address, PORT, timeout_s=BLOCKED_TIMEOUT_S)
    assert at_router.returncode == 1 and "timed out" in at_router.stdout


def test_public_hosts_reach_each_other(testbed: Testbed) -> None:
    alice = testbed.add_public_host("alice")
    carol = testbed.add_public_host("carol")
    assert (alice.address, carol.address) == ("10.200.0.10", "10.200.0.11")
    for src, dst in ((alice, carol), (carol, alice)):
        server = start_server(testbed, dst, PORT)
        testbed.run(src, netprobe("send", "--host", dst.address, "--port", PORT, "--bytes", 10),
                    timeout=20, check=True)
        assert server_result(server)["peer"] == src.address


def test_uplink_and_downlink_are_shaped(testbed: Testbed) -> None:
    coord = testbed.add_public_host("coord")
    bob = testbed.add_home_host("bob", uplink="20mbit", downlink="10mbit")
    assert (bob.uplink, bob.downlink) == ("20mbit", "10mbit")
    server = start_server(testbed, coord, PORT)
    testbed.run(bob, netprobe("send", "--host", coord.address, "--port", PORT, "--bytes", 4_000_000),
                timeout=30, check=True)
    up = server_result(server)
    assert up["received"] == 4_000_000
    assert 0.6 * 20 <= _mbit_s(up) <= 1.1 * 20, f"uplink 20mbit measured {_mbit_s(up):.1f} Mbit/s"
    server = start_server(testbed, coord, PORT + 1, "--send", 2_000_000)
    done = testbed.run(bob, netprobe("recv", "--host", coord.address, "--port", PORT + 1),
                       timeout=30, check=True, capture_output=True, text=True)
    down = json.loads(done.stdout)
    server_result(server)
    assert down["received"] == 2_000_000
    assert 0.6 * 10 <= _mbit_s(down) <= 1.1 * 10, f"downlink 10mbit measured {_mbit_s(down):.1f} Mbit/s"


def _assert_gone(prefix: str, run_id: str) -> None:
    assert _namespaces(prefix) == []
    assert not (MARKER_DIR / run_id).exists()


def test_close_kills_processes_and_deletes_namespaces() -> None:
    require_testbed()
    bed = Testbed(grace_s=0.5)
    coord, bob = bed.add_public_host("coord"), bed.add_home_host("bob")
    assert _namespaces(bed.prefix) == sorted(
        [bed.internet, coord.netns, bob.netns, bob.router_netns])
    assert (MARKER_DIR / bed.id).is_file()
    tracked = bed.popen(bob, ["sleep", "300"])
    stubborn = bed.popen(coord, [sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ok', flush=True); time.sleep(300)"],
                         stdout=subprocess.PIPE, text=True)
    assert read_line(stubborn, timeout_s=10) == "ok"  # its SIGTERM handler is in place
    untracked = subprocess.Popen(coord.argv(["sleep", "300"]), start_new_session=True)
    try:
        bed.close()
        assert tracked.poll() == -signal.SIGTERM
        assert stubborn.poll() == -signal.SIGKILL
        assert untracked.wait(timeout=5) == -signal.SIGKILL  # found inside the namespace
        _assert_gone(bed.prefix, bed.id)
        bed.close()  # idempotent
        with pytest.raises(TestbedError, match="closed"):
            bed.popen(coord, ["true"])
    finally:
        untracked.kill()
        untracked.wait(timeout=5)


def test_an_exception_inside_with_still_tears_down() -> None:
    require_testbed()
    with pytest.raises(KeyboardInterrupt), Testbed() as bed:
        bob = bed.add_home_host("bob", uplink="5mbit")
        proc = bed.popen(bob, ["sleep", "300"])
        raise KeyboardInterrupt
    assert proc.poll() == -signal.SIGTERM
    _assert_gone(bed.prefix, bed.id)


OWNER = """
import time
from lila_run.testbed import Testbed
bed = Testbed()
host = bed.add_home_host("bob")
bed.popen(host, ["sleep", "300"])
print(bed.id, flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_owner_killed(procs, sig: int) -> None:
    """SIGTERM: the owner cleans up and still dies of SIGTERM. SIGKILL: leftovers stay until
    cleanup_stale, which deletes them (and kills what ran inside) because the owner is gone."""
    require_testbed()
    owner = procs.spawn([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    run_id = read_line(owner, timeout_s=20)
    assert len(run_id) == 6, f"owner printed {run_id!r}"
    prefix = f"lila-{run_id}-"
    expected = sorted(f"{prefix}{name}" for name in ("internet", "bob", "bob-nat"))
    assert _namespaces(prefix) == expected
    owner.send_signal(sig)
    assert owner.wait(timeout=20) == -sig
    if sig == signal.SIGKILL:
        assert _namespaces(prefix) == expected and (MARKER_DIR / run_id).is_file()
        assert set(expected) <= set(cleanup_stale())
    _assert_gone(prefix, run_id)

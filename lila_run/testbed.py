# SPDX-License-Identifier: AGPL-3.0-or-later
"""A small "internet" on one machine, made of Linux network namespaces (root only), for tests, benchmarks
and ``lila up --testbed``::

    with Testbed() as bed:
        coord = bed.add_public_host("coord")                               # 10.200.0.10
        bob = bed.add_home_host("bob", uplink="20mbit", downlink="100mbit")  # 192.168.1.2 behind NAT
        server = bed.popen(coord, ["python", "server.py"])                 # killed by close()
        bed.run(bob, ["python", "client.py", coord.address], timeout=60)

What it builds (every namespace is named ``lila-<id>-...``; ``<id>`` is 6 hex characters, new per run)::

    lila-<id>-internet: bridge br0 (10.200.0.0/24; the bridge has no address)
      |-- p1 <veth> eth0  lila-<id>-coord     public host 10.200.0.10 (the next: .11, .12, ...)
      '-- p2 <veth> wan0  lila-<id>-bob-nat   NAT router 10.200.0.101 (home network n: .100+n)
                    lan0  192.168.n.1
                      |  <veth>
                    eth0  lila-<id>-bob       home host 192.168.n.2, default route via .1

A home router masquerades what leaves ``wan0`` (nftables), forwards only LAN->WAN and established/related
replies, and accepts input only from ``lo``, the LAN and established/related traffic: no connection from
the internet reaches a home host or its router. ``ip_forward=1`` only in router namespaces. Nothing is
created in the root namespace.

Bandwidth: ``uplink``/``downlink`` are tc rate strings such as ``"20mbit"`` (units kbit, mbit, gbit; SI),
or None for unshaped. Uplink = a ``tbf`` on the egress of the host's (home: the router's) internet-side
veth; downlink = a ``tbf`` on the egress of the bridge-side veth toward it. The bucket holds
max(16 KB, rate/50) and queues ``QUEUE_S`` of traffic: bulk TCP measured 96-97% of 1-500mbit. Pick
rates of the links to mimic (home DSL/cable: 5-50mbit up, 50-500mbit down); at Gbit/s rates the CPU,
not the shaping, may be the limit.

NOT emulated: latency, jitter, loss. This kernel has no ``netem`` (nor ``fq``/``fq_codel``): round trips
stay sub-millisecond, so do not read wide-area latency effects from a testbed run.

Teardown: :meth:`Testbed.close` (idempotent; on leaving ``with``, on any exception including
KeyboardInterrupt, and from an atexit backstop) sends SIGTERM, then SIGKILL after ``grace_s``, to the
process groups :meth:`Testbed.popen` started, kills whatever else runs inside its namespaces (only ours
can), and deletes them, which removes the veths and the bridge. SIGTERM to the owner: if its disposition
is the default when a testbed is made in the main thread, a handler closes every live testbed, restores
the default and re-sends SIGTERM (the process still dies of SIGTERM, without leftovers); a handler
someone else installed is left alone and should call ``close()`` or raise so ``with`` blocks unwind.

After a crash (SIGKILL of the owner): each testbed keeps ``/run/lila-testbed/<id>`` with its owner's
pid, that process's start time and its namespaces; ``python -m lila_run.testbed --cleanup-stale`` (or
:func:`cleanup_stale`) deletes the namespaces of markers whose owner is gone. Namespaces without such a
marker are never touched.
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NET_PREFIX = "10.200.0"
FIRST_PUBLIC, LAST_PUBLIC, FIRST_ROUTER = 10, 99, 100
MARKER_DIR = Path("/run/lila-testbed")
CMD_TIMEOUT_S = 15.0
MIN_BURST_BYTES = 16 * 1024
QUEUE_S = 0.05
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_UNITS = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class TestbedError(RuntimeError):
    """A command that builds the testbed failed."""

    __test__ = False  # not a pytest test class


def _tool(name: str) -> str:
    return shutil.which(name, path=_SBIN) or name


def parse_rate(rate: str, *, what: str = "rate") -> int:
    """Bits per second of a tc rate string such as ``"20mbit"``; ValueError naming the bad value."""
    match = _RATE.match(rate.strip().lower()) if isinstance(rate, str) else None
    bps = float(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if bps < 8000:
        raise ValueError(f"{what} {rate!r} is not a rate: use a tc rate string such as '20mbit' "
                         "(units kbit, mbit, gbit; at least 8kbit), or None for unshaped")
    return int(bps)


def _sh(argv: list[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    logger.debug("testbed: %s", " ".join(argv))
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@cache
def available() -> str | None:
    """None when namespaces can be made here, else why not (cached)."""
    if os.geteuid() != 0:
        return "the namespace testbed needs root (ip netns add)"
    for name in ("ip", "tc", "nft"):
        if shutil.which(name, path=_SBIN) is None:
            return f"`{name}` is not installed (Debian: apt-get install iproute2 nftables)"
    probe = f"lila-probe-{secrets.token_hex(4)}"
    try:
        _sh([_tool("ip"), "netns", "add", probe])
    except (TestbedError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _sh([_tool("ip"), "netns", "exec", probe, _tool("nft"), "add", "table", "ip", "probe"])
    except (TestbedError, OSError, subprocess.TimeoutExpired) as exc:
        return f"nftables does not work inside a namespace: {exc}"
    finally:
        _sh([_tool("ip"), "netns", "del", probe], check=False)
    return None


@dataclass(frozen=True, kw_only=True)
class Host:
    """One machine of the testbed. ``public_address`` is what the internet sees (the router's for NAT)."""

    name: str
    netns: str
    address: str
    public_address: str
    nat: bool
    uplink: str | None = None
    downlink: str | None = None
    router_netns: str | None = None

    def argv(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside this host's namespace."""
        return [_tool("ip"), "netns", "exec", self.netns, *cmd]


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_live: set[Testbed] = set()
_live_lock = threading.RLock()
_atexit_registered = False


def _close_all() -> None:
    with _live_lock:
        beds = list(_live)
    for bed in beds:
        bed.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    _close_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


class Testbed:
    """Namespaces, veths, a bridge, NAT routers and shaping; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, run_id: str | None = None, grace_s: float = 3.0) -> None:
        self.id = run_id or secrets.token_hex(3)
        while run_id is None and (MARKER_DIR / self.id).exists():
            self.id = secrets.token_hex(3)
        if not re.fullmatch(r"[0-9a-f]{6}", self.id):
            raise ValueError(f"run_id {run_id!r} must be 6 lowercase hex characters, e.g. '3fa9c1'")
        self.prefix = f"lila-{self.id}-"
        self.internet = f"{self.prefix}internet"
        self.grace_s = grace_s
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.RLock()
        self._closed = False
        self._ports = 0
        self._homes = 0
        self._marker = MARKER_DIR / self.id
        self._owner = os.getpid()  # a forked child inherits this object; only the owner tears down
        if reason := available():
            raise TestbedError(reason)
        self._register()
        try:
            self._add_namespace(self.internet)
            self._ip(self.internet, "link", "add", "br0", "type", "bridge")
            self._ip(self.internet, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    # -- building -------------------------------------------------------------------------------------

    def _register(self) -> None:
        global _atexit_registered
        with _live_lock:
            _live.add(self)
            if not _atexit_registered:
                atexit.register(_close_all)
                _atexit_registered = True
            if (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
                signal.signal(signal.SIGTERM, _on_sigterm)

    def _write_marker(self) -> None:
        MARKER_DIR.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "start": _start_time(os.getpid()), "namespaces": self._namespaces}
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self._marker)

    def _ip(self, netns: str, *args: str) -> None:
        _sh([_tool("ip"), "-n", netns, *args])

    def _add_namespace(self, netns: str) -> None:
        if netns in self._namespaces:
            raise ValueError(f"namespace {netns} already exists in this testbed: pick another host name")
        self._namespaces.append(netns)
        self._write_marker()  # before creating it, so a crash in between still leaves it findable
        try:
            _sh([_tool("ip"), "netns", "add", netns])
        except BaseException:  # e.g. it exists already: not ours, so never delete it
            self._namespaces.remove(netns)
            self._write_marker()
            raise
        self._ip(netns, "link", "set", "lo", "up")

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        self._ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)

    def _shape(self, netns: str, dev: str, rate: str | None) -> None:
        if rate is None:
            return
        bytes_s = parse_rate(rate) / 8
        burst = max(MIN_BURST_BYTES, int(bytes_s / 50))
        limit = burst + max(64 * 1024, int(bytes_s * QUEUE_S))
        _sh([_tool("tc"), "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf",
             "rate", rate, "burst", str(burst), "limit", str(limit)])

    def _attach(self, netns: str, dev: str, address: str, uplink: str | None, downlink: str | None) -> str:
        """A veth from ``netns``/``dev`` to the bridge with ``address``; returns the bridge-side name."""
        self._ports += 1
        port = f"p{self._ports}"
        self._veth(netns, dev, self.internet, port)
        self._ip(self.internet, "link", "set", port, "master", "br0", "up")
        self._ip(netns, "addr", "add", f"{address}/24", "dev", dev)
        self._ip(netns, "link", "set", dev, "up")
        self._shape(netns, dev, uplink)
        self._shape(self.internet, port, downlink)
        return port

    def _check(self, name: str, uplink: str | None, downlink: str | None) -> tuple[str | None, str | None]:
        if self._closed:
            raise TestbedError("this testbed is closed")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"host name {name!r}: use lowercase letters, digits and '-', e.g. 'peer-1'")
        if name in self.hosts:
            raise ValueError(f"host name {name!r} is already used in this testbed")
        for what, rate in (("uplink", uplink), ("downlink", downlink)):
            if rate is not None:
                parse_rate(rate, what=what)
        return tuple(None if r is None else r.strip().lower() for r in (uplink, downlink))

    def add_public_host(self, name: str, *, uplink: str | None = None, downlink: str | None = None) -> Host:
        """A host on the bridge with its own public address (10.200.0.10, .11, ...)."""
        with self._lock:
            uplink, downlink = self._check(name, uplink, downlink)
            publics = sum(1 for h in self.hosts.values() if not h.nat)
            if FIRST_PUBLIC + publics > LAST_PUBLIC:
                raise TestbedError(f"at most {LAST_PUBLIC - FIRST_PUBLIC + 1} public hosts per testbed")
            address = f"{NET_PREFIX}.{FIRST_PUBLIC + publics}"
            netns = f"{self.prefix}{name}"
            self._add_namespace(netns)
            self._attach(netns, "eth0", address, uplink, downlink)
            host = Host(name=name, netns=netns, address=address, public_address=address, nat=False,
                        uplink=uplink, downlink=downlink)
            self.hosts[name] = host
            return host

    def add_home_host(self, name: str, *, uplink: str | None = None, downlink: str | None = None) -> Host:
        """A host behind its own NAT router (192.168.n.2 behind 10.200.0.100+n); nothing reaches it from
        the internet unless it connected first."""
        with self._lock:
            uplink, downlink = self._check(name, uplink, downlink)
            if FIRST_ROUTER + self._homes + 1 > 254:
                raise TestbedError("at most 154 home hosts per testbed")
            self._homes += 1
            n = self._homes
            public, lan = f"{NET_PREFIX}.{FIRST_ROUTER + n}", f"192.168.{n}"
            netns, router = f"{self.prefix}{name}", f"{self.prefix}{name}-nat"
            self._add_namespace(router)
            self._add_namespace(netns)
            self._attach(router, "wan0", public, uplink, downlink)
            self._veth(router, "lan0", netns, "eth0")
            self._ip(router, "addr", "add", f"{lan}.1/24", "dev", "lan0")
            self._ip(router, "link", "set", "lan0", "up")
            self._ip(netns, "addr", "add", f"{lan}.2/24", "dev", "eth0")
            self._ip(netns, "link", "set", "eth0", "up")
            self._ip(netns, "route", "add", "default", "via", f"{lan}.1")
            _sh([_tool("ip"), "netns", "exec", router, _tool("sysctl"), "-qw", "net.ipv4.ip_forward=1"])
            _sh([_tool("ip"), "netns", "exec", router, _tool("nft"), "-f", "-"], input=_NAT_RULES)
            host = Host(name=name, netns=netns, address=f"{lan}.2", public_address=public, nat=True,
                        uplink=uplink, downlink=downlink, router_netns=router)
            self.hosts[name] = host
            return host

    # -- processes ------------------------------------------------------------------------------------

    def popen(self, host: Host, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``host``'s namespace in a new session; it is killed by :meth:`close`."""
        with self._lock:
            if self._closed:
                raise TestbedError("this testbed is closed")
            popen_kwargs["start_new_session"] = True
            proc = subprocess.Popen(host.argv(argv), **popen_kwargs)
            self._procs.append(proc)
            return proc

    def run(self, host: Host, argv: list[str], *, timeout: float, **run_kwargs: Any
            ) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``argv`` inside ``host``'s namespace; ``timeout`` is mandatory."""
        return subprocess.run(host.argv(argv), timeout=timeout, **run_kwargs)

    # -- teardown -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete every namespace of this testbed. Idempotent; never raises."""
        with self._lock:
            if self._closed or os.getpid() != self._owner:
                return
            self._closed = True
            try:
                self._stop_procs()
                _delete_namespaces(self._namespaces)
                self._marker.unlink(missing_ok=True)
            except Exception:  # a backstop must not raise: log, and cleanup_stale can finish the job
                logger.exception("testbed %s: cleanup failed", self.id)
        with _live_lock:
            _live.discard(self)
            if (not _live and threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) is _on_sigterm):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _stop_procs(self) -> None:
        # only groups whose leader is not yet reaped: a reaped pid may belong to someone else by now
        # (what they left behind still sits in our namespaces and is killed there)
        running = [p for p in self._procs if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in running:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + self.grace_s
            for proc in running:
                try:
                    proc.wait(timeout=max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            running = [p for p in running if p.poll() is None]
            if not running:
                break
        self._procs.clear()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NAT_RULES = """
table ip lila_nat {
    chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
}
table inet lila_filter {
    chain input { type filter hook input priority filter; policy drop;
        ct state established,related accept; iifname { "lo", "lan0" } accept; }
    chain forward { type filter hook forward priority filter; policy drop;
        ct state established,related accept; iifname "lan0" oifname "wan0" accept; }
}
"""


def _netns_pids(netns: str) -> list[int]:
    done = _sh([_tool("ip"), "netns", "pids", netns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()] if done.returncode == 0 else []


def _delete_namespaces(namespaces: list[str]) -> None:
    """Kill what runs inside ``namespaces`` (only our processes can be there), then delete them."""
    existing = set(_sh([_tool("ip"), "netns", "list"]).stdout.split())
    namespaces = [ns for ns in namespaces if ns in existing]
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pids = [pid for ns in namespaces for pid in _netns_pids(ns)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for netns in reversed(namespaces):  # hosts before routers before the internet
        done = _sh([_tool("ip"), "netns", "del", netns], check=False)
        if done.returncode != 0:
            logger.warning("testbed: could not delete namespace %s: %s", netns, done.stderr.strip())


def cleanup_stale() -> list[str]:
    """Delete the namespaces of testbeds whose owner process is gone; returns the namespaces deleted.
    Only namespaces listed in a ``/run/lila-testbed/<id>`` marker and named ``lila-<id>-...`` count."""
    removed: list[str] = []
    if not MARKER_DIR.is_dir():
        return removed
    for marker in MARKER_DIR.iterdir():
        if not re.fullmatch(r"[0-9a-f]{6}", marker.name):
            continue
        try:
            record = json.loads(marker.read_text())
            pid, start, namespaces = int(record["pid"]), record["start"], list(record["namespaces"])
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("testbed: unreadable marker %s left alone", marker)
            continue
        now = _start_time(pid)
        if now is not None and start in (None, now):
            continue  # its owner is still running (same pid, same start time)
        ours = [ns for ns in namespaces if isinstance(ns, str) and ns.startswith(f"lila-{marker.name}-")]
        existing = set(_sh([_tool("ip"), "netns", "list"]).stdout.split())
        _delete_namespaces(ours)
        removed += [ns for ns in ours if ns in existing]
        marker.unlink(missing_ok=True)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lila_run.testbed", description=__doc__.split("\n")[0])
    parser.add_argument("--cleanup-stale", action="store_true",
                        help="delete namespaces of testbeds whose owner process has died")
    args = parser.parse_args(argv)
    if not args.cleanup_stale:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for netns in cleanup_stale():
        logger.info("deleted %s", netns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

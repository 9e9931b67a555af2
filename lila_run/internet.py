# SPDX-License-Identifier: AGPL-3.0-or-later
"""A LILA network across the namespaced internet of :mod:`lila_run.testbed`: the way volunteers run it.

The coordinator runs on a public host (``lila-coordinator serve --grpc 0.0.0.0:7600 --announce
<its address>``, as ``docs/deploy.md`` says), every peer on a host of its own — public, or at home behind
its own NAT router — and joins with the README's volunteer command and nothing else::

    lila-peer join 10.200.0.10:7600 --token T    (LILA_JOIN_TOKEN in the environment)

Uplinks and downlinks are shaped per host (``tbf``; no latency: see :mod:`lila_run.testbed`).
:class:`InternetNetwork` is a :class:`~lila_run.local_network.LocalNetwork` whose processes live inside
the testbed's namespaces; the tests (``tests/integration/test_internet.py``), the benchmark
(``python -m bench.internet``) and ``lila up --testbed`` share it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.cli import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from lila_run.harness import LocalCoordinator
from lila_run.local_network import STATUS_TIMEOUT_S, LocalNetwork
from lila_run.testbed import Host, Testbed

PUBLIC = "public"
HOME = "home"
KINDS = (PUBLIC, HOME)
STATUS_SCRIPT = ("import sys, urllib.request; "
                 "sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read())")


@dataclass(frozen=True, kw_only=True)
class Links:
    """Rates of one host's link (tc rate strings such as ``"20mbit"``; None: unshaped)."""

    uplink: str | None = None
    downlink: str | None = None


@dataclass
class InternetNetwork(LocalNetwork):
    """A coordinator on a public host and peers on public or home hosts of ``bed``.

    ``coordinator_links``: the coordinator's link (a relay for every NAT'd peer when no peer is public;
    leave it unshaped unless that is what is measured). Start the coordinator, then each peer with
    :meth:`start_peer` (``kind``: ``"public"`` or ``"home"``, ``links``: its link).
    """

    bed: Testbed | None = None
    coordinator_links: Links = field(default_factory=Links)
    coordinator_host: Host | None = None
    hosts: list[Host] = field(default_factory=list)

    def _testbed(self) -> Testbed:
        if self.bed is None:
            raise RuntimeError("InternetNetwork needs a testbed: InternetNetwork(options, bed=Testbed())")
        return self.bed

    @property
    def coordinator_address(self) -> str:
        """What a volunteer types: the coordinator's public ``HOST:7600``."""
        if self.coordinator_host is None:
            raise RuntimeError("start the coordinator first")
        return f"{self.coordinator_host.address}:{DEFAULT_GRPC_PORT}"

    def start_coordinator(self) -> dict[str, Any]:
        bed = self._testbed()
        host = bed.add_public_host("coord", uplink=self.coordinator_links.uplink,
                                   downlink=self.coordinator_links.downlink)
        self.coordinator_host = host
        coordinator = LocalCoordinator(
            config=self.options.config, workdir=self.options.workdir, dht=self.options.dht,
            grpc=f"0.0.0.0:{DEFAULT_GRPC_PORT}", python=self.python, env=self._env(),
            extra=("--http", f"0.0.0.0:{DEFAULT_HTTP_PORT}", "--announce", host.address),
            spawn=lambda argv, **kwargs: bed.popen(host, argv, **kwargs),
        )
        self.token = coordinator.create_token(label="testbed")
        try:
            self.ready = coordinator.start()
        finally:
            self.coordinator = coordinator.proc
        return self.ready

    def peer_command(self, index: int, extra_args: Sequence[str] = ()) -> list[str]:
        argv = super().peer_command(index, extra_args)
        argv[argv.index(self.ready["grpc"])] = self.coordinator_address
        return argv

    def start_peer(self, index: int | None = None, *, extra_args: Sequence[str] = (), kind: str = PUBLIC,
                   links: Links | None = None) -> subprocess.Popen:
        """Start peer ``index`` on a new host of ``kind`` with ``links`` (see the class docstring)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: use one of {KINDS}")
        bed = self._testbed()
        index = len(self.peers) if index is None else index
        links = links or Links()
        add = bed.add_public_host if kind == PUBLIC else bed.add_home_host
        host = add(f"peer{index}", uplink=links.uplink, downlink=links.downlink)
        env = self._env()
        env["LILA_JOIN_TOKEN"] = self.peer_token(index)
        with self._log(f"peer-{index}") as log:
            proc = bed.popen(host, self.peer_command(index, extra_args), stdout=log, stderr=subprocess.STDOUT,
                             env=env)
        self.peers.append(proc)
        self.hosts.append(host)
        return proc

    def fetch(self, path: str) -> bytes | None:
        """GET ``path`` from the coordinator, from inside its namespace (None when it does not answer)."""
        if self.coordinator_host is None:
            return None
        url = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}{path}"
        try:
            done = self._testbed().run(self.coordinator_host, [sys.executable, "-c", STATUS_SCRIPT, url,
                                                               str(STATUS_TIMEOUT_S)],
                                       timeout=STATUS_TIMEOUT_S + 10, capture_output=True)
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

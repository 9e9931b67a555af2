# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's hivemind DHT node: the bootstrap peer every joiner is pointed at.

hivemind runs the DHT in a child process (plus its ``p2pd`` daemon), so start it before the gRPC
server (forking after gRPC has started threads is unsafe) and shut it down on exit. Importing
hivemind is slow (:attr:`DhtNode.import_seconds` reports how slow); it happens only when a node is
started.

With a credential ``authority`` the node is admitted-only (:mod:`lila_net.dht.security`): it
mints a credential for its own identity, refuses DHT requests from peers without a valid one, stores
only signed, schema-checked records, and refuses banned peers as soon as :meth:`DhtNode.refresh`
passes it the revocation list.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lila_net.credentials import CredentialAuthority

logger = logging.getLogger(__name__)

COORDINATOR_PEER = "coordinator"
RENEW_AT_FRACTION = 0.5


@dataclass
class DhtNode:
    """A running DHT node: ``maddrs`` are the multiaddrs (with ``/p2p/<id>``) joiners should dial;
    ``start_seconds`` is how long the node took to come up, ``import_seconds`` the hivemind import."""

    dht: Any
    maddrs: list[str]
    start_seconds: float
    import_seconds: float
    authority: CredentialAuthority | None = None
    identity: Any = None
    credentials: Any = None
    private_dir: Path | None = None
    _renew_at: float = 0.0
    _revoked: tuple[str, ...] = field(default_factory=tuple)

    def refresh(self, revoked: Iterable[str], *, now: float) -> None:
        """Renew the node's own credential at half its lifetime and publish the current revocation list
        to its DHT process (cheap when nothing changed)."""
        if self.authority is None:
            return
        revoked = tuple(sorted(revoked))
        if now < self._renew_at and revoked == self._revoked:
            return
        credential, claims = self.authority.issue(
            peer=COORDINATOR_PEER, libp2p_id=self.identity.peer_id, public_key=self.identity.public_key, now=now
        )
        self.credentials.write(credential, revoked)
        self._renew_at = claims.issued_at + RENEW_AT_FRACTION * (claims.expires_at - claims.issued_at)
        self._revoked = revoked

    def shutdown(self) -> None:
        """Stop the node and its daemon processes."""
        self.dht.shutdown()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def start_dht(
    *,
    host: str,
    port: int = 0,
    announce: str | None = None,
    identity_path: str | None = None,
    authority: CredentialAuthority | None = None,
    now: float | None = None,
) -> DhtNode:
    """Start a DHT node listening on ``host:port`` over TCP (port 0: any free port).

    ``identity_path`` keeps the node's libp2p key in a file so its peer id survives restarts (the
    file is created if missing); without it every start gets a new id. ``host`` must be an IPv4
    address that joiners can reach, or ``0.0.0.0`` (every interface) with ``announce``: the public address or
    name peers dial (a NAT'd or container deployment); only that address is then handed to joiners, who
    also reserve relay slots at it when they cannot be dialed themselves (the node relays: circuit relay v2
    is on by default in hivemind's daemon). Without ``announce`` the node's own view of its addresses is
    handed out, loopback ones last. ``authority``: make the node admitted-only (see above).
    """
    listen = [f"/ip4/{host}/tcp/{port}"]
    extra: dict[str, Any] = {}
    if announce:
        port = port or free_tcp_port(host)  # libp2p refuses to announce port 0
        listen = [f"/ip4/{host}/tcp/{port}"]
        extra["announce_maddrs"] = [tcp_maddr(announce, port)]
    if authority is not None:
        return _start_secure_dht(
            listen=listen,
            extra=extra,
            identity_path=identity_path,
            authority=authority,
            now=time.time() if now is None else now,
        )
    started = time.perf_counter()
    import hivemind  # deferred: slow import, only needed when a node runs

    imported = time.perf_counter()
    import_seconds = imported - started
    started = imported
    kwargs: dict[str, Any] = {"host_maddrs": listen, "start": True, **extra}
    if identity_path:
        kwargs["identity_path"] = identity_path
    dht = hivemind.DHT(**kwargs)
    maddrs = _dialable_first(dht.get_visible_maddrs())
    seconds = time.perf_counter() - started
    logger.info(
        "DHT node up in %.2f s (+%.2f s importing hivemind) at %s", seconds, import_seconds, ", ".join(maddrs)
    )
    return DhtNode(dht, maddrs, seconds, import_seconds)


def _start_secure_dht(
    *, listen: list[str], extra: dict[str, Any], identity_path: str | None, authority: CredentialAuthority,
    now: float
) -> DhtNode:
    started = time.perf_counter()
    import hivemind

    from lila_net.credentials import CredentialVerifier
    from lila_net.dht.security import CredentialFile, PeerIdentity, dht_options

    import_seconds = time.perf_counter() - started
    started = time.perf_counter()
    private_dir = Path(tempfile.mkdtemp(prefix="lila-dht-"))
    try:
        if identity_path and Path(identity_path).is_file():
            identity = PeerIdentity.from_identity_file(identity_path)
        else:
            identity = PeerIdentity.generate()
            if identity_path:
                identity.write_identity_file(identity_path)
        credentials = CredentialFile(private_dir / "credential.json")
        node = DhtNode(None, [], 0.0, import_seconds, authority, identity, credentials, private_dir)
        node.refresh((), now=now)
        verifier = CredentialVerifier([authority.public_key], run=authority.run)
        options = dht_options(
            identity=identity,
            identity_path=private_dir / "identity.key",
            credentials=credentials,
            verifier=verifier,
        )
        node.dht = hivemind.DHT(host_maddrs=listen, start=True, **extra, **options)
    except BaseException:
        shutil.rmtree(private_dir, ignore_errors=True)
        raise
    node.maddrs = _dialable_first(node.dht.get_visible_maddrs())
    node.start_seconds = time.perf_counter() - started
    logger.info(
        "admitted-only DHT node up in %.2f s (+%.2f s importing hivemind) at %s",
        node.start_seconds,
        import_seconds,
        ", ".join(node.maddrs),
    )
    return node


def tcp_maddr(host: str, port: int) -> str:
    """The multiaddr of ``host`` (IPv4, IPv6 or a DNS name) at TCP ``port``."""
    try:
        version = ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return f"/dns/{host}/tcp/{port}"
    return f"/ip{version}/{host.strip('[]')}/tcp/{port}"


def free_tcp_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the caller binds it next; a race only with other programs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _dialable_first(maddrs: Iterable[Any]) -> list[str]:
    """Multiaddr strings with loopback addresses last: a joiner on another host tries the others first."""
    texts = [str(m) for m in maddrs]
    return sorted(texts, key=lambda m: m.startswith(("/ip4/127.", "/ip6/::1/")))

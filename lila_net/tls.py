# SPDX-License-Identifier: AGPL-3.0-or-later
"""TLS for the coordinator's gRPC endpoint: join and session tokens must not cross the internet in clear.

The coordinator serves TLS with ``lila-coordinator serve --tls-cert FULLCHAIN.pem --tls-key KEY.pem``
(a certificate for the name peers dial, e.g. from Let's Encrypt); peers then join with ``--tls`` (the
system's certificate authorities) or ``--tls-ca CA.pem`` (a private or self-signed certificate). A TLS
proxy in front of a plain coordinator works the same way for peers (docs/deploy.md). Without TLS a peer
that dials a host other than loopback says in a warning that its token crosses the network unencrypted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says which and what to do."""


def _read_pem(path: Path, what: str, marker: bytes) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None
    if marker not in data:
        raise TlsError(f"{path} holds no PEM {what} (no '{marker.decode()}' line): pass the PEM file, "
                       "e.g. fullchain.pem for --tls-cert and privkey.pem for --tls-key")
    return data


@dataclass(frozen=True, kw_only=True)
class ServerTls:
    """The coordinator's certificate chain and private key (PEM files)."""

    cert: Path
    key: Path

    def credentials(self) -> grpc.ServerCredentials:
        chain = _read_pem(self.cert, "certificate", b"-----BEGIN CERTIFICATE-----")
        key = _read_pem(self.key, "private key", b"PRIVATE KEY-----")
        return grpc.ssl_server_credentials([(key, chain)])


def server_tls(cert: Path | str | None, key: Path | str | None) -> ServerTls | None:
    """``ServerTls`` from the two ``serve`` flags (both or neither)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TlsError("--tls-cert and --tls-key go together: pass the certificate chain and its private key")
    return ServerTls(cert=Path(cert), key=Path(key))


def channel_credentials(*, tls: bool, ca: Path | str | None) -> grpc.ChannelCredentials | None:
    """What a peer dials the coordinator with: None (plain), the system's CAs (``tls``) or ``ca`` only."""
    if ca is not None:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(Path(ca), "CA certificate", b"-----BEGIN CERTIFICATE-----"))
    return grpc.ssl_channel_credentials() if tls else None


def is_loopback(address: str) -> bool:
    """True when ``host:port`` names this machine (tokens sent there never leave it)."""
    host = address.rpartition(":")[0].strip("[]") or address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

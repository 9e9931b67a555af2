# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's side of the reachability check: who is calling, and can we dial them back?

A peer listens on a port and calls ``CheckReachability`` with a random secret; the coordinator opens a TCP
connection to the address the call came from at that port and reads the secret (see
:mod:`peer.reachability` for what the peer does with the answer). It only ever dials the caller's own
address: a peer cannot make the coordinator connect to a third host.

``DIAL_TIMEOUT_S`` bounds both the connect and the read. Raise it for peers on very slow or lossy links
(a refused or filtered port should fail fast; a home NAT usually drops the SYN, which costs the full
timeout once per join).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import urllib.parse

DIAL_TIMEOUT_S = 3.0
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64


def observed_host(peer: str | None) -> str:
    """The caller's IP from gRPC's ``context.peer()`` (``ipv4:203.0.113.5:4242``, ``ipv6:[::1]:4242``,
    ``ipv6:%5B::ffff:10.0.0.2%5D:4242``); IPv4-mapped IPv6 addresses come back as IPv4. Empty when the
    transport has no IP address (a unix socket)."""
    if not peer:
        return ""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host = rest.rpartition(":")[0].strip("[]") if rest.count(":") else rest
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def scrape_target(declared: str, caller: str) -> tuple[str, str]:
    """The metrics address the run's Prometheus may scrape for a peer that declared ``declared``
    (``host:port``, already checked) from the IP ``caller``: ``(address, why_not)``.

    Only the port is taken from the peer; the host is always the caller's own address, so a peer cannot
    make the coordinator's Prometheus fetch a third host (the cloud metadata service at 169.254.169.254,
    an internal admin page). A caller address that no one can scrape — link-local, multicast, unspecified,
    reserved, or unknown (a unix socket) — gives no target and says why. Private and loopback callers are
    kept: they are where the peer is (a LAN, a container network, one host)."""
    if not declared:
        return "", ""
    port = int(declared.rpartition(":")[2])
    try:
        address = ipaddress.ip_address(caller)
    except ValueError:
        return "", "the coordinator cannot see the caller's IP address"
    if address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved:
        return "", f"the caller's address {caller} is link-local, multicast, unspecified or reserved"
    return format_address(caller, port), ""


async def dial_back(host: str, port: int, secret: bytes, *, timeout_s: float = DIAL_TIMEOUT_S) -> str:
    """Connect to ``host:port`` and read ``len(secret)`` bytes; return ``""`` when they match, else why not."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        received = await asyncio.wait_for(reader.readexactly(len(secret)), timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s (a NAT or firewall drops incoming connections)"
    except asyncio.IncompleteReadError:
        return "the connection closed before the probe secret arrived (another program listens on that port)"
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    finally:
        if writer is not None:
            writer.close()
    if received != secret:
        return "another program answered on that port (wrong probe secret)"
    return ""

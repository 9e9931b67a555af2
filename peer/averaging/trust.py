# SPDX-License-Identifier: AGPL-3.0-or-later
"""One peer's standing in the run: its identity, its coordinator-signed credential, and who is banned.

A :class:`TrustSession` generates the peer's libp2p identity (an RSA key), asks the coordinator for a
credential bound to it (``fetch``: ``IssueCredential`` over gRPC in a real peer), and keeps three things
current from then on, from a background thread or explicit :meth:`TrustSession.refresh` calls:

- the credential, renewed at half its lifetime, and pushed to every listener (the averager and the state
  sync present it on each call) and to the :class:`~lila_net.dht.security.CredentialFile` the DHT
  process reads;
- the revocation list (libp2p ids of banned peers), from each fetch and from heartbeats (:meth:`revoke`),
  so banned peers are refused by the averaging layer and the DHT at once;
- :attr:`banned`: set when the coordinator refuses this peer (``PermissionError`` from ``fetch``).

The private files (identity key, credential) live in a temporary directory of mode 0700, removed by
:meth:`close`. Nothing here logs a credential.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lila_net.credentials import CredentialVerifier
from lila_net.dht.security import CredentialFile, PeerIdentity, dht_options
from peer.averaging.auth import CredentialAuthorizer

logger = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 10.0
RENEW_AT_FRACTION = 0.5


@dataclass(frozen=True)
class IssuedCredential:
    """What the coordinator answers to IssueCredential."""

    credential: str
    expires_at: float
    authority_public_keys: tuple[bytes, ...]
    revoked: tuple[str, ...] = ()


CredentialFetch = Callable[[str, bytes], IssuedCredential]
"""``fetch(libp2p_peer_id, openssh_public_key) -> IssuedCredential``; raises ``PermissionError`` when the
coordinator refuses this peer (banned), any other exception when it cannot be reached."""


class TrustSession:
    """See the module docstring. ``run_name``: the run the credentials must name (the coordinator's run).

    ``refresh_s``: how often the background thread asks for the revocation list (and renews when due):
    the delay before a ban reaches this peer. 10 s costs the coordinator one cheap call per peer per
    interval; much shorter wastes it, much longer leaves banned peers in rounds for longer.
    """

    def __init__(
        self,
        *,
        run_name: str,
        fetch: CredentialFetch,
        identity: PeerIdentity | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(refresh_s) and refresh_s > 0):
            raise ValueError(f"refresh_s={refresh_s!r}: must be a positive number of seconds")
        self.identity = identity or PeerIdentity.generate()
        self.run_name = run_name
        self.refresh_s = refresh_s
        self._fetch = fetch
        self._clock = clock
        self._dir = Path(tempfile.mkdtemp(prefix="lila-trust-"))  # mkdtemp: mode 0700
        self.credentials = CredentialFile(self._dir / "credential.json")
        self.listeners: list[Callable[[bytes], None]] = []
        self.banned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._revoked: set[str] = set()
        self._credential = ""  # set by _install below, renewed by the refresh thread
        self._renew_at = 0.0
        try:
            issued = fetch(self.identity.peer_id, self.identity.public_key)
            self.verifier = CredentialVerifier(issued.authority_public_keys, run=run_name)
            self._install(issued)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.authorize = CredentialAuthorizer(self.verifier, clock=clock)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def credential(self) -> bytes:
        """The current credential, to present on averaging and state calls."""
        return self._credential.encode()

    def _install(self, issued: IssuedCredential) -> None:
        claims = self.verifier.verify(issued.credential, now=self._clock(), libp2p_id=self.identity.peer_id)
        with self._lock:
            self._credential = issued.credential
            self._renew_at = claims.issued_at + RENEW_AT_FRACTION * (claims.expires_at - claims.issued_at)
            self._revoked = set(issued.revoked)
            self.verifier.set_revoked(self._revoked)
            self.credentials.write(self._credential, self._revoked)
        for listener in self.listeners:
            listener(self.credential)

    def dht_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Transport.create``/``hivemind.DHT``: this identity, admitted-only DHT."""
        return dht_options(
            identity=self.identity,
            identity_path=self._dir / "identity.key",
            credentials=self.credentials,
            verifier=self.verifier,
        )

    def revoke(self, libp2p_ids: Iterable[str]) -> None:
        """Add banned ids (e.g. from a heartbeat reply); they are refused from now on."""
        new = set(libp2p_ids) - self._revoked
        if not new:
            return
        with self._lock:
            self._revoked |= new
            self.verifier.set_revoked(self._revoked)
            self.credentials.write(self._credential, self._revoked)
        logger.warning("refusing %d banned peer(s) from now on: %s", len(new), sorted(new))

    def refresh(self) -> bool:
        """Ask the coordinator for the revocation list, renewing the credential when it is due.
        False when the coordinator refused this peer (banned) or could not be reached."""
        try:
            issued = self._fetch(self.identity.peer_id, self.identity.public_key)
        except PermissionError as exc:
            if not self.banned:
                logger.error("the coordinator refused this peer: %s", exc)
            self.banned = True
            return False
        except Exception as exc:
            logger.warning("could not refresh the averaging credential: %s", exc)
            return False
        if self._clock() >= self._renew_at:
            self._install(issued)
        else:
            self.revoke(issued.revoked)
        return True

    def start(self) -> TrustSession:
        """Refresh every ``refresh_s`` in a daemon thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="lila-trust-refresh", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def close(self) -> None:
        """Stop the refresh thread and delete the private files (after the DHT has shut down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh_s + 1)
        shutil.rmtree(self._dir, ignore_errors=True)

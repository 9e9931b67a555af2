# SPDX-License-Identifier: AGPL-3.0-or-later
"""Authorization of averaging and state-download calls.

hivemind's ``authorizer`` protects the DHT only. Every request of this layer carries the caller's
credential (opaque bytes, e.g. the coordinator's session token) and the receiving peer calls an
``Authorize`` function with the libp2p-authenticated peer id of the caller before it reads anything
else of the request. Replies that carry data carry the responder's credential too, checked the same way.

A credential is sent to the peer being called, so it must be bound to the sender's identity: use
:class:`CredentialAuthorizer`, which accepts only coordinator-signed credentials naming the caller's
libp2p peer id (see :mod:`lila_net.credentials`), so a peer that collects them cannot replay them.
:class:`StaticTokenAuthorizer` (one shared secret) remains for tests and private runs.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable

from lila_net.credentials import CredentialError, CredentialVerifier

logger = logging.getLogger(__name__)

Authorize = Callable[[str, bytes], bool]
"""``authorize(peer_id, credential) -> bool``: True admits the call. It must be fast and must not block."""


def check_authorized(authorize: Authorize, peer_id: str, credential: bytes) -> bool:
    """Call ``authorize`` and treat any exception or non-bool answer as a refusal (logged, never raised)."""
    try:
        verdict = authorize(peer_id, credential)
    except Exception:
        logger.exception("authorize() raised for peer %s; refusing the call", peer_id)
        return False
    if verdict is not True:
        if verdict is not False:
            logger.error("authorize() returned %r for peer %s instead of a bool; refusing", verdict, peer_id)
        return False
    return True


class StaticTokenAuthorizer:
    """Admits any peer that presents one of a fixed set of tokens (constant-time comparison).

    Meant for tests and small private runs; a public run should check coordinator-signed credentials
    bound to the caller's peer id instead.
    """

    def __init__(self, tokens: Iterable[bytes]) -> None:
        self._tokens = [bytes(token) for token in tokens]
        if not self._tokens or any(not token for token in self._tokens):
            raise ValueError("StaticTokenAuthorizer needs at least one non-empty token")

    def __call__(self, peer_id: str, credential: bytes) -> bool:
        # compare against every token so the time taken does not reveal which one matched
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(token, credential)
        return matched


class CredentialAuthorizer:
    """Admits a caller whose credential the run's authority signed for exactly its libp2p peer id, that has
    not expired and whose id is not on the verifier's revocation list (updated from the coordinator).

    Refusals are logged with the reason (never the credential). ``clock``: wall-clock seconds.
    """

    def __init__(self, verifier: CredentialVerifier, *, clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self._clock = clock

    def __call__(self, peer_id: str, credential: bytes) -> bool:
        try:
            self.verifier.verify(credential, now=self._clock(), libp2p_id=peer_id)
        except CredentialError as exc:
            logger.info("refused peer %s: %s", peer_id, exc)
            return False
        return True

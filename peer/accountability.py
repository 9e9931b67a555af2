# SPDX-License-Identifier: AGPL-3.0-or-later
"""Trust on the peer side: credentials from the coordinator, and strike reports for what this peer rejected.

- :func:`credential_fetcher` turns ``CoordinatorClient.issue_credential`` into the fetch function of a
  :class:`~peer.averaging.trust.TrustSession` (which renews the credential before it expires).
- :class:`StrikeReporter` turns the rejections of one averaging round into one ``ReportStrike``: only the
  rejections of the part this peer owns (what it witnessed itself; the other owners report their own
  parts), with the round, the group and each rejected peer's reason and norm ratio. The coordinator makes
  a strike of a round once enough distinct owners reported the same peer, and bans after enough strikes.
- :func:`open_trusted_averaging` is what a peer node calls instead of building the transport, averager and
  state sync itself: it gets a credential bound to a fresh libp2p identity, starts an admitted-only DHT
  node with it, and wires the credential and the ban list into the averaging layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lila_net.aggregation import REASONS, Rejection
from lila_net.proto import coordinator_pb2 as pb
from peer.averaging.averager import Averager, RoundResult
from peer.averaging.config import AveragingConfig, StateSyncConfig
from peer.averaging.state_sync import StateSync
from peer.averaging.transport import Transport
from peer.averaging.trust import IssuedCredential, TrustSession
from peer.reachability import CLIENT, Reachability

logger = logging.getLogger(__name__)

MAX_EVIDENCE_PER_REPORT = 64
KNOWN_REASONS = frozenset(REASONS)


def credential_fetcher(client: Any) -> Callable[[str, bytes], IssuedCredential]:
    """``TrustSession``'s fetch function over ``client.issue_credential`` (a ``CoordinatorClient``)."""

    def fetch(libp2p_peer_id: str, public_key: bytes) -> IssuedCredential:
        response = client.issue_credential(libp2p_peer_id, public_key)
        return IssuedCredential(
            credential=response.credential,
            expires_at=response.expires_at,
            authority_public_keys=tuple(response.authority_public_keys),
            revoked=tuple(response.revoked_libp2p_ids),
        )

    return fetch


def strike_evidence(result: RoundResult, me: str) -> list[tuple[int, Rejection]]:
    """The rejections of ``result`` that happened in the part ``me`` owns, one per rejected peer."""
    if result.group is None:
        return []
    mine = result.group.part_of(me)
    if mine is None:
        return []
    seen: dict[str, tuple[int, Rejection]] = {}
    for part, rejection in result.rejections:
        if part == mine and rejection.peer_id != me and rejection.reason in KNOWN_REASONS:
            seen.setdefault(rejection.peer_id, (part, rejection))
    return list(seen.values())[:MAX_EVIDENCE_PER_REPORT]


def strike_request(result: RoundResult, evidence: Sequence[tuple[int, Rejection]]) -> pb.ReportStrikeRequest:
    """The ReportStrike message for ``evidence`` of ``result``'s round."""
    items = []
    for part, rejection in evidence:
        item = pb.StrikeEvidence(libp2p_peer_id=rejection.peer_id, reason=rejection.reason, part=part)
        ratio = rejection.norm_ratio
        if ratio is not None and math.isfinite(ratio) and ratio >= 0:
            item.norm_ratio = ratio
        items.append(item)
    group_id = "" if result.group is None else result.group.group_id
    return pb.ReportStrikeRequest(round=result.round_index, group_id=group_id, evidence=items)


@dataclass
class StrikeReporter:
    """Reports, after every round, the peers this peer rejected in its own part (see the module docstring).

    ``report``: sends a ``ReportStrikeRequest`` (``CoordinatorClient.report_strike``). ``me``: this peer's
    libp2p id. Failures are logged and counted, never raised: accountability must not stop training.
    ``rejections_seen`` counts, per accused peer, the rounds in which this peer rejected it.
    """

    report: Callable[[pb.ReportStrikeRequest], pb.ReportStrikeResponse]
    me: str
    reports_sent: int = 0
    reports_failed: int = 0
    rejections_seen: dict[str, int] = field(default_factory=dict)

    def report_round(self, result: RoundResult) -> pb.ReportStrikeResponse | None:
        """Report ``result``'s rejections in this peer's part; None when there was nothing to report."""
        evidence = strike_evidence(result, self.me)
        if not evidence:
            return None
        for _, rejection in evidence:
            self.rejections_seen[rejection.peer_id] = self.rejections_seen.get(rejection.peer_id, 0) + 1
        try:
            response = self.report(strike_request(result, evidence))
        except Exception as exc:
            self.reports_failed += 1
            logger.warning("could not report %d rejection(s) of round %d: %s", len(evidence), result.round_index, exc)
            return None
        self.reports_sent += 1
        for outcome in response.outcomes:
            if outcome.struck:
                logger.warning(
                    "round %d: strike %d against %s%s",
                    result.round_index,
                    outcome.strikes,
                    outcome.libp2p_peer_id,
                    " (now banned)" if outcome.banned else "",
                )
        return response


@dataclass
class TrustedAveraging:
    """What :func:`open_trusted_averaging` builds; :meth:`shutdown` stops all of it in the right order."""

    session: TrustSession
    transport: Transport
    averager: Averager
    state_sync: StateSync
    reporter: StrikeReporter

    def report_round(self, result: RoundResult) -> None:
        """Call after every averaging round."""
        self.reporter.report_round(result)

    def on_heartbeat(self, response: pb.HeartbeatResponse | None) -> None:
        """Feed a heartbeat reply: its banned libp2p ids are refused at once."""
        if response is not None and response.revoked_libp2p_ids:
            self.session.revoke(response.revoked_libp2p_ids)

    def shutdown(self) -> None:
        for part in (self.state_sync, self.averager, self.transport):
            try:
                part.shutdown()
            except Exception as exc:
                logger.warning("shutdown of %s failed: %s", type(part).__name__, exc)
        self.session.close()


def open_trusted_averaging(
    client: Any,
    *,
    run_name: str,
    run_id: str,
    initial_peers: Sequence[str],
    reachability: Reachability,
    max_numel: int,
    config: AveragingConfig | None = None,
    state_config: StateSyncConfig | None = None,
) -> TrustedAveraging:
    """Identity, credential, admitted-only DHT, averager and state sync for a joined peer.

    ``client``: the peer's ``CoordinatorClient`` after Join. ``run_name``: the coordinator's run name
    (what credentials carry); ``run_id``: the averaging run id (DHT keys and protocol names).
    ``reachability``: what the daemon listens on and announces (:mod:`peer.reachability`); a relayed peer
    reserves its relay slots at the ``initial_peers`` (the coordinator's DHT node relays).
    """
    session = TrustSession(run_name=run_name, fetch=credential_fetcher(client))
    transport = None
    try:
        transport = Transport.create(
            initial_peers=list(initial_peers),
            host_maddrs=list(reachability.listen_maddrs),
            announce_maddrs=list(reachability.announce_maddrs),
            client_mode=reachability.mode == CLIENT,
            relays=list(initial_peers) if reachability.relayed else [],
            **session.dht_options(),
        )
        if transport.peer_id != session.peer_id:
            raise RuntimeError("the DHT started under another identity than the credential's")
        averager = Averager(
            transport,
            run_id=run_id,
            credential=session.credential,
            authorize=session.authorize,
            max_numel=max_numel,
            config=config,
        )
        state_sync = StateSync(
            transport,
            run_id=run_id,
            credential=session.credential,
            authorize=session.authorize,
            config=state_config,
        )
    except BaseException:
        if transport is not None:
            transport.shutdown()
        session.close()
        raise
    session.listeners += [averager.set_credential, state_sync.set_credential]
    session.start()
    reporter = StrikeReporter(report=client.report_strike, me=transport.peer_id)
    return TrustedAveraging(session, transport, averager, state_sync, reporter)

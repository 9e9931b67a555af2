# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's averaging layer: our own all-reduce on hivemind's P2P streams and DHT.

hivemind gives the DHT and libp2p streams (through its ``p2pd``); matchmaking, the all-reduce, robust
aggregation at the part owners, round verification and state download are ours — why, in
``docs/decisions/0001-own-allreduce-over-hivemind.md``. The part owner encodes its aggregate once and every
member decodes the same bytes, so all peers get bitwise-identical results; every request carries a
credential checked before anything else is read, and nothing from a peer is unpickled.

Modules: ``transport`` (the only hivemind import besides ``lila_net.dht.security``), ``wire`` (frames),
``rpc`` (authorized calls), ``matchmaking``, ``allreduce``, ``averager`` (facade), ``verify``,
``state_format``, ``state_sync``, ``auth``, ``config``, ``trust`` (identity, coordinator-signed credential,
ban list), ``stats``. Aggregation rules, DHT keys and record schemas are shared contracts in ``lila_net``.
Trust: see ``peer.accountability.open_trusted_averaging``.

Typical use (one peer)::

    transport = Transport.create(initial_peers=bootstrap)
    averager = Averager(transport, run_id="lila-20m", credential=token, authorize=check, max_numel=n)
    result = averager.average(step, delta, codec=get_codec("e8", bits=4), aggregator=get_aggregator("mean"))
    if result.ok:
        apply_outer_step(result.average)
        report = averager.verify_round(step, params_hash(model.parameters()), members=result.group.members)
"""

from lila_net.aggregation import (
    AggregateResult,
    AggregationError,
    Aggregator,
    CenteredClipAggregator,
    Contribution,
    MeanAggregator,
    Rejection,
    TrimmedMeanAggregator,
    aggregator_for,
    get_aggregator,
)
from peer.averaging.allreduce import Codec, PartFailure, part_bounds
from peer.averaging.auth import Authorize, CredentialAuthorizer, StaticTokenAuthorizer
from peer.averaging.averager import Averager, RoundResult, describe
from peer.averaging.config import AveragingConfig, StateSyncConfig
from peer.averaging.matchmaking import Group
from peer.averaging.state_format import StateFormatError, StateSnapshot, pack_state, unpack_state
from peer.averaging.state_sync import Donor, DownloadResult, StateSync, StateSyncError
from peer.averaging.transport import Transport
from peer.averaging.trust import IssuedCredential, TrustSession
from peer.averaging.verify import VerifyReport, params_hash

__all__ = [
    "AggregateResult",
    "AggregationError",
    "Aggregator",
    "Authorize",
    "Averager",
    "AveragingConfig",
    "CenteredClipAggregator",
    "Codec",
    "Contribution",
    "CredentialAuthorizer",
    "Donor",
    "DownloadResult",
    "Group",
    "IssuedCredential",
    "MeanAggregator",
    "PartFailure",
    "Rejection",
    "RoundResult",
    "StateFormatError",
    "StateSnapshot",
    "StateSync",
    "StateSyncConfig",
    "StateSyncError",
    "StaticTokenAuthorizer",
    "Transport",
    "TrimmedMeanAggregator",
    "TrustSession",
    "VerifyReport",
    "aggregator_for",
    "describe",
    "get_aggregator",
    "pack_state",
    "params_hash",
    "part_bounds",
    "unpack_state",
]

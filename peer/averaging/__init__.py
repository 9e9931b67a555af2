# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's averaging layer: our own all-reduce on hivemind's P2P streams and DHT.

Decision (issue 5): we do NOT use hivemind's ``DecentralizedAverager``. We keep hivemind for what works
(the DHT, libp2p streams through its ``p2pd``, NAT traversal) and build matchmaking, the all-reduce and
state download ourselves, because

1. its ``CompressionBase`` cannot carry our lattice codec: a custom codec only enters by borrowing one of
   six fixed ``CompressionType`` enum values and patching the module-global registry on every peer
   before the averager process forks;
2. lossy codecs make its peers drift: the part owner keeps its own slice uncompressed and every peer
   applies ``local + decompress(avg - local)``, so results differ by 1e-3 after a few 4-bit rounds. Here the
   owner encodes the aggregate once and every member, the owner too, decodes the same bytes:
   bitwise-identical results on all peers;
3. its averaging and state-download RPCs have no authorization hook (hivemind's authorizer covers the
   DHT only). Here every request carries a credential checked by a pluggable ``authorize(peer_id,
   credential)`` before anything else is read, and nothing from a peer is unpickled;
4. robust aggregation (trimmed mean, CenteredClip) must run at the part reducer, with per-contributor
   evidence, which its reducer has no place for.

Also, its 8-bit codecs silently fail under numpy 2 while ``step()`` reports success; every round here is
verified (``Averager.verify_round``) and a failed part is always reported, never silent.

Modules: ``transport`` and ``dht_security`` (the only hivemind imports), ``wire`` (frames), ``rpc``
(authorized calls), ``matchmaking``, ``allreduce``, ``aggregators``, ``averager`` (facade), ``verify``,
``state_format``, ``state_sync``, ``auth``, ``config``, ``dht_keys``, ``dht_records`` (DHT record schemas),
``trust`` (identity, coordinator-signed credential, ban list), ``stats``.

Trust (issue 7): every averaging, state and DHT call carries a credential the coordinator signed for the
caller's libp2p identity (:class:`CredentialAuthorizer` checks it against the authenticated peer id), the
DHT admits only credentialed peers and stores only signed, schema-checked records, and banned peers are
refused as soon as the coordinator's ban list arrives. See ``peer.accountability.open_trusted_averaging``.

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

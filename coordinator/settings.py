# SPDX-License-Identifier: AGPL-3.0-or-later
"""Settings of a running coordinator, read from the run config's [coordinator] and [trust] sections.

Keys the run config does not (yet) declare fall back to the defaults below; ``with_overrides``
applies command-line overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from coordinator.state import (
    DEFAULT_LEASE_TIMEOUT_S,
    DEFAULT_STALL_TIMEOUT_S,
    DEFAULT_STRIKE_MEMORY_ROUNDS,
    DEFAULT_STRIKE_WITNESSES,
    DEFAULT_STRIKES_TO_BAN,
    CoreConfig,
)
from lila_net.credentials import DEFAULT_CREDENTIAL_TTL_S

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs besides the plan.

    ``rate_limit_per_s``/``rate_limit_burst``: calls per peer (see :class:`~coordinator.ratelimit.RateLimiter`).
    ``join_rate_limit_per_s``/``join_rate_limit_burst``: Join calls per client address; raise them when
    many peers share one address (a NAT, or a benchmark on one machine).
    ``handler_timeout_s``: the server answers DEADLINE_EXCEEDED if a call takes longer (normally
    microseconds; only a stuck database gets near it).
    ``status_refresh_s``: how often the status snapshot (page, /api/status, /metrics) is rebuilt.
    ``history_limit``: metrics reports kept in the snapshot for the chart.
    ``max_message_bytes``: largest request accepted (RESOURCE_EXHAUSTED beyond); requests are small,
    so 4 MiB leaves plenty of room while bounding memory per call.
    ``strikes_to_ban`` / ``strike_witnesses`` / ``strike_memory_rounds``: the banning policy (see :class:`~coordinator.state.CoreConfig`).
    ``credential_ttl_s``: lifetime of averaging credentials (see :mod:`lila_net.credentials`): a
    ban reaches peers that missed the revocation list within this time.
    ``dht_auth``: run the DHT node with the credential authorizer and record validator, so only
    admitted peers can bootstrap from it and only signed, schema-checked records are stored. Turn it
    off only for peers too old to present credentials.
    """

    heartbeat_interval_s: float = 5.0
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    session_ttl_s: float = 86_400.0
    max_message_bytes: int = 4 * MIB
    max_send_message_bytes: int = 64 * MIB
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 40
    join_rate_limit_per_s: float = 5.0
    join_rate_limit_burst: int = 50
    handler_timeout_s: float = 10.0
    status_refresh_s: float = 1.0
    tick_interval_s: float = 1.0
    token_refresh_s: float = 2.0
    history_limit: int = 2000
    max_batch: int = 256
    max_leases_per_peer: int = 1
    outer_step_quorum: int = 1
    strikes_to_ban: int = DEFAULT_STRIKES_TO_BAN
    strike_witnesses: int = DEFAULT_STRIKE_WITNESSES
    strike_memory_rounds: int = DEFAULT_STRIKE_MEMORY_ROUNDS
    credential_ttl_s: float = DEFAULT_CREDENTIAL_TTL_S
    dht_auth: bool = True

    def core_config(self) -> CoreConfig:
        """The scheduler's part of the settings."""
        return CoreConfig(
            lease_timeout_s=self.lease_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
            max_leases_per_peer=self.max_leases_per_peer,
            outer_step_quorum=self.outer_step_quorum,
            strikes_to_ban=self.strikes_to_ban,
            strike_witnesses=self.strike_witnesses,
            strike_memory_rounds=self.strike_memory_rounds,
            retry_after_s=self.heartbeat_interval_s,
        )

    @classmethod
    def from_run_config(cls, config: Any) -> ServerSettings:
        """Settings from a ``lila_net.config.RunConfig`` (any object with ``coordinator`` and ``trust``)."""
        values: dict[str, Any] = {}
        section = getattr(config, "coordinator", None)
        for f in dataclasses.fields(cls):
            if section is not None and hasattr(section, f.name):
                values[f.name] = getattr(section, f.name)
        trust = getattr(config, "trust", None)
        for name in ("strikes_to_ban", "strike_witnesses", "strike_memory_rounds", "credential_ttl_s"):
            if trust is not None and hasattr(trust, name):
                values[name] = getattr(trust, name)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> ServerSettings:
        """A copy with the given (non-None) settings replaced."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a running coordinator is told: the run config's ``[coordinator]`` and ``[trust]`` sections.

Every setting, its default and its rule are defined once, in :mod:`lila_net.config.sections`; this
module only bundles the two sections for the server and derives the scheduler's :class:`CoreConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from coordinator.state import CoreConfig
from lila_net.config import CoordinatorSection, RunConfig, TrustSection


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """The ``[coordinator]`` and ``[trust]`` sections a coordinator runs with (see their docstrings for
    what each setting does and how to tune it)."""

    coordinator: CoordinatorSection = field(default_factory=CoordinatorSection)
    trust: TrustSection = field(default_factory=TrustSection)

    @classmethod
    def from_run_config(cls, config: RunConfig) -> ServerSettings:
        return cls(coordinator=config.coordinator, trust=config.trust)

    @classmethod
    def of(cls, **values: Any) -> ServerSettings:
        """Defaults with the named settings of either section replaced, e.g. ``of(lease_timeout_s=10.0,
        strikes_to_ban=2)`` (tests, benchmarks)."""
        return cls().with_overrides(**values)

    def with_overrides(self, **overrides: Any) -> ServerSettings:
        """A copy with the given (non-None) settings replaced, in whichever section holds them; an
        unknown name raises TypeError naming it."""
        sections = {"coordinator": self.coordinator, "trust": self.trust}
        changes: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for key, value in overrides.items():
            if value is None:
                continue
            owner = next((name for name, s in sections.items() if key in _field_names(s)), None)
            if owner is None:
                raise TypeError(f"{key!r} is not a [coordinator] or [trust] setting")
            changes[owner][key] = value
        return ServerSettings(**{name: dataclasses.replace(s, **changes[name]) for name, s in sections.items()})

    def core_config(self) -> CoreConfig:
        """The scheduler's part of the settings."""
        c, t = self.coordinator, self.trust
        return CoreConfig(
            lease_timeout_s=c.lease_timeout_s,
            stall_timeout_s=c.stall_timeout_s,
            max_leases_per_peer=c.max_leases_per_peer,
            outer_step_quorum=c.outer_step_quorum,
            retry_after_s=c.heartbeat_interval_s,
            strikes_to_ban=t.strikes_to_ban,
            strike_witnesses=t.strike_witnesses,
            strike_memory_rounds=t.strike_memory_rounds,
            max_sessions_per_token=c.max_sessions_per_token,
            max_tokens_per_doc=c.max_tokens_per_doc,
        )


def _field_names(section: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(section)}

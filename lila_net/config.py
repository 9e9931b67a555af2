# SPDX-License-Identifier: AGPL-3.0-or-later
"""The run config: one TOML file that the coordinator, every peer and the local launcher share.

A run config has one typed section per concern (zeroband style)::

    [run]          name, seed
    [model]        preset and variant of the LILA model
    [data]         named sources, tokenizer, shard size, validation split
    [curriculum]   stages (filter, sequence length, token budget, mixture) and the LR schedule
    [diloco]       inner steps H, batch, inner/outer optimizer settings, averaging deadlines
    [codec]        how pseudo-gradients travel (lattice codec, bits, error feedback)
    [trust]        aggregation rule and banning policy
    [coordinator]  lease and heartbeat timing, message limits, rate limits

Every section is validated on load; cross-field rules (a stage's mixture names a declared source,
the batch fits the sequence length, ...) are checked in :meth:`RunConfig.validate`. A bad value raises
:class:`ConfigError` naming the key and what to do about it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lila_data.curriculum import CurriculumConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CODEC_NAMES = ("fp32", "fp16", "int8", "int4", "e8", "leech")
AGGREGATORS = ("mean", "trimmed_mean", "centered_clip")
MODEL_VARIANTS = ("vanilla", "e8", "leech", "monster")


class ConfigError(ValueError):
    """A run config value is missing, unknown or out of range; the message names the key and the fix."""


@dataclass(frozen=True)
class RunSection:
    """Identity of the run. ``name`` appears on the status page and prefixes every DHT key."""

    name: str
    seed: int = 0

    def validate(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"run.name={self.name!r}: use letters, digits, '-', '_' or '.' (it becomes part of DHT keys)"
            )


@dataclass(frozen=True)
class ModelSection:
    """Which LILA model the run trains: a preset from ``lila_model`` and a variant."""

    preset: str = "debug"
    variant: str = "vanilla"
    lambda_geo: float | None = None

    def validate(self) -> None:
        if self.variant not in MODEL_VARIANTS:
            raise ConfigError(f"model.variant={self.variant!r}: choose one of {', '.join(MODEL_VARIANTS)}")
        if self.lambda_geo is not None and self.lambda_geo < 0:
            raise ConfigError(f"model.lambda_geo={self.lambda_geo}: must be >= 0 (0 turns the resonance loss off)")


@dataclass(frozen=True)
class DataSection:
    """Where the text comes from and how it is cut into shards.

    ``sources`` maps a short name (used in curriculum mixtures) to a source spec understood by
    ``lila_data.open_source``. ``docs_per_shard`` trades ledger size against lost work: a shard is the
    unit a peer leases, so a huge shard makes a crashed peer's lease expensive to redo, a tiny one makes
    the coordinator busy. ``validation_fraction`` of documents (by a stable hash of their id) is held out.
    """

    sources: dict[str, str] = field(default_factory=lambda: {"fineweb": "bundled:fineweb-edu-sample"})
    tokenizer: str = "fineweb-edu-8192"
    docs_per_shard: int = 16
    validation_fraction: float = 0.1
    validation_max_docs: int = 64

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty: name at least one source, e.g. fineweb = \"bundled:fineweb-edu-sample\"")
        if self.docs_per_shard < 1:
            raise ConfigError(f"data.docs_per_shard={self.docs_per_shard}: must be >= 1")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ConfigError(
                f"data.validation_fraction={self.validation_fraction}: use a value in (0, 0.5), e.g. 0.05"
            )
        if self.validation_max_docs < 1:
            raise ConfigError(f"data.validation_max_docs={self.validation_max_docs}: must be >= 1")


@dataclass(frozen=True)
class DilocoSection:
    """DiLoCo training: ``inner_steps`` (H) local AdamW steps, then one averaged outer Nesterov step.

    Tuning: a larger H sends less data per token but lets peers drift further apart; 20–100 works for
    small models, 100–500 for large ones. ``outer_lr`` 0.7 with ``outer_momentum`` 0.9 is the DiLoCo
    paper's setting; outer_lr above 1 usually diverges. ``batch_size`` is sequences per inner step per
    peer (micro_batch × grad_accum); the peer's memory plan picks the split.
    ``averaging_timeout_s`` bounds how long a round may wait for a slow or dead peer.
    """

    inner_steps: int = 20
    batch_size: int = 8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    matchmaking_time_s: float = 3.0
    averaging_timeout_s: float = 30.0
    min_group_size: int = 1

    def validate(self) -> None:
        if self.inner_steps < 1:
            raise ConfigError(f"diloco.inner_steps={self.inner_steps}: must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"diloco.batch_size={self.batch_size}: must be >= 1")
        if not 0 < self.outer_lr <= 2:
            raise ConfigError(f"diloco.outer_lr={self.outer_lr}: use a value in (0, 2]; 0.7 is the usual choice")
        if not 0 <= self.outer_momentum < 1:
            raise ConfigError(f"diloco.outer_momentum={self.outer_momentum}: must be in [0, 1)")
        if self.matchmaking_time_s <= 0 or self.averaging_timeout_s <= self.matchmaking_time_s:
            raise ConfigError(
                "diloco.averaging_timeout_s must exceed diloco.matchmaking_time_s (both > 0): "
                f"got {self.averaging_timeout_s} and {self.matchmaking_time_s}"
            )
        if self.min_group_size < 1:
            raise ConfigError(f"diloco.min_group_size={self.min_group_size}: must be >= 1")


@dataclass(frozen=True)
class CodecSection:
    """How pseudo-gradients travel between peers (see ``lila_codec``).

    ``e8`` at 4 bits is the default: about 8× less traffic than fp32 with a relative error near 1%.
    2 bits halves that again at a clearly larger error; keep ``error_feedback`` on so nothing is lost
    over rounds. ``block_size`` is coordinates per fp16 scale (64–128).
    """

    name: str = "e8"
    bits: int = 4
    block_size: int = 64
    hadamard: bool = True
    dither: bool = False
    error_feedback: bool = True

    def validate(self) -> None:
        if self.name not in CODEC_NAMES:
            raise ConfigError(f"codec.name={self.name!r}: choose one of {', '.join(CODEC_NAMES)}")
        if self.name == "e8" and self.bits not in (2, 3, 4, 8):
            raise ConfigError(f"codec.bits={self.bits}: the e8 codec supports 2, 3, 4 or 8 bits per coordinate")
        if not 8 <= self.block_size <= 4096 or self.block_size % 8:
            raise ConfigError(f"codec.block_size={self.block_size}: use a multiple of 8 between 8 and 4096 (64–128)")


@dataclass(frozen=True)
class TrustSection:
    """Aggregation of pseudo-gradients and the banning policy.

    ``mean`` is exact but one bad peer can ruin a round; ``centered_clip`` or ``trimmed_mean`` bound any
    single peer's influence. ``norm_bound`` rejects contributions whose norm exceeds this multiple of the
    group's median.

    Banning: a peer earns a strike for a round once ``strike_witnesses`` distinct part owners reported
    rejecting its contribution in that round (1 lets any single peer — possibly a liar — strike others;
    more than the group size minus one can never be reached). After ``strikes_to_ban`` strikes within the
    last ``strike_memory_rounds`` rounds it is banned: its session, leases and credential are revoked.
    Too few strikes ban peers for one transient glitch; too many let an attacker spoil more rounds.
    ``credential_ttl_s``: lifetime of the averaging credential peers renew from the coordinator; a ban
    reaches a peer that missed the heartbeat's ban list within this time (minutes to an hour).
    """

    aggregator: str = "mean"
    norm_bound: float = 5.0
    strikes_to_ban: int = 3
    strike_witnesses: int = 2
    strike_memory_rounds: int = 50
    credential_ttl_s: float = 3600.0

    def validate(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"trust.aggregator={self.aggregator!r}: choose one of {', '.join(AGGREGATORS)}")
        if self.norm_bound <= 1:
            raise ConfigError(f"trust.norm_bound={self.norm_bound}: must be > 1 (a multiple of the median norm)")
        if self.strikes_to_ban < 1:
            raise ConfigError(f"trust.strikes_to_ban={self.strikes_to_ban}: must be >= 1")
        if self.strike_witnesses < 1:
            raise ConfigError(f"trust.strike_witnesses={self.strike_witnesses}: must be >= 1 (2 is typical)")
        if self.strike_memory_rounds < self.strikes_to_ban:
            raise ConfigError(f"trust.strike_memory_rounds={self.strike_memory_rounds}: must be >= "
                              f"trust.strikes_to_ban={self.strikes_to_ban}, or no peer can ever be banned")
        if not 60 <= self.credential_ttl_s <= 7 * 86_400:
            raise ConfigError(f"trust.credential_ttl_s={self.credential_ttl_s}: use 60 s to 7 days (3600 is typical)")


@dataclass(frozen=True)
class CoordinatorSection:
    """Coordinator timing and limits.

    A lease expires ``lease_timeout_s`` after the holder's last heartbeat; too short and a slow peer loses
    its shard while still working, too long and a crashed peer's shard waits idle. Keep it at least three
    heartbeat intervals. ``max_leases_per_peer`` 2 lets a peer start the next shard while the last
    sequences of the previous one are still in its current batch; 1 makes batches end short at every
    shard boundary.
    """

    heartbeat_interval_s: float = 5.0
    lease_timeout_s: float = 30.0
    session_ttl_s: float = 86_400.0
    max_message_bytes: int = 4 * 1024 * 1024
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 40
    status_refresh_s: float = 1.0
    max_leases_per_peer: int = 2

    def validate(self) -> None:
        if self.max_leases_per_peer < 1:
            raise ConfigError(f"coordinator.max_leases_per_peer={self.max_leases_per_peer}: must be >= 1")
        if self.heartbeat_interval_s <= 0:
            raise ConfigError(f"coordinator.heartbeat_interval_s={self.heartbeat_interval_s}: must be > 0")
        if self.lease_timeout_s < 3 * self.heartbeat_interval_s:
            raise ConfigError(
                f"coordinator.lease_timeout_s={self.lease_timeout_s} is under 3 heartbeat intervals "
                f"({3 * self.heartbeat_interval_s}): raise it, or peers lose leases while still alive"
            )
        if self.max_message_bytes < 1024:
            raise ConfigError(f"coordinator.max_message_bytes={self.max_message_bytes}: must be >= 1024")
        if self.rate_limit_per_s <= 0 or self.rate_limit_burst < 1:
            raise ConfigError("coordinator.rate_limit_per_s must be > 0 and coordinator.rate_limit_burst >= 1")
        if self.session_ttl_s <= 0 or self.status_refresh_s <= 0:
            raise ConfigError("coordinator.session_ttl_s and coordinator.status_refresh_s must be > 0")


_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "model": ModelSection,
    "data": DataSection,
    "diloco": DilocoSection,
    "codec": CodecSection,
    "trust": TrustSection,
    "coordinator": CoordinatorSection,
}


@dataclass(frozen=True)
class RunConfig:
    """A whole run: every section, validated together."""

    run: RunSection
    model: ModelSection
    data: DataSection
    curriculum: CurriculumConfig
    diloco: DilocoSection = field(default_factory=DilocoSection)
    codec: CodecSection = field(default_factory=CodecSection)
    trust: TrustSection = field(default_factory=TrustSection)
    coordinator: CoordinatorSection = field(default_factory=CoordinatorSection)

    def validate(self) -> None:
        """Check every section, then the rules that span sections."""
        for name in _SECTIONS:
            getattr(self, name).validate()
        for stage in self.curriculum.stages:
            unknown = sorted(set(stage.mixture) - set(self.data.sources))
            if unknown:
                raise ConfigError(
                    f"curriculum stage {stage.name!r} mixes source(s) {unknown} that [data.sources] does not "
                    f"declare; declared: {sorted(self.data.sources)}"
                )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Build and validate a config from parsed TOML."""
        known = set(_SECTIONS) | {"curriculum"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; known sections: {sorted(known)}")
        for required in ("run", "curriculum"):
            if required not in raw:
                raise ConfigError(f"missing section [{required}]")
        sections = {name: _build_section(name, kind, raw.get(name, {})) for name, kind in _SECTIONS.items()}
        try:
            curriculum = CurriculumConfig.from_dict(raw["curriculum"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(f"[curriculum]: {exc}") from exc
        config = cls(curriculum=curriculum, **sections)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``to_toml`` writes and ``from_dict`` reads back)."""
        out = {name: _section_dict(getattr(self, name)) for name in _SECTIONS}
        out["curriculum"] = self.curriculum.to_dict()
        return out

    def to_toml(self) -> str:
        """Serialize to TOML text; ``load_run_config`` of that text gives back an equal config."""
        return tomli_w.dumps(self.to_dict())


def loads_run_config(text: str, *, origin: str = "run config") -> RunConfig:
    """Parse and validate run config TOML text (e.g. the copy a coordinator sends to joining peers)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from exc
    try:
        return RunConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"run config {path} does not exist; see runs/ for examples") from None
    return loads_run_config(text, origin=str(path))


def _section_dict(section: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}


def _build_section(name: str, kind: type, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{name}] must be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(kind)
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"[{name}] has unknown key(s) {unknown}; known keys: {sorted(fields)}")
    values = {key: _check_type(f"{name}.{key}", value, hints[key]) for key, value in raw.items()}
    try:
        return kind(**values)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from exc


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Coerce ints to floats where a float is expected; reject everything else that does not match."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None:
            return None
        return _check_type(key, value, options[0])
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key} must be a table of strings")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value

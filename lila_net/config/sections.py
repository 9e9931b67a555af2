# SPDX-License-Identifier: AGPL-3.0-or-later
"""The typed sections of a run config; each checks itself on construction (:mod:`lila_net.config.section`).

Choices come from the registries of the packages that own them: presets and variants from
``lila_model.config``, codecs and their options from ``lila_codec`` (a codec section is valid exactly
when ``lila_codec.get_codec`` accepts it), aggregation rules from ``lila_net.aggregation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lila_data.sources import DEFAULT_SOURCE
from lila_data.tokenizer import DEFAULT_TOKENIZER
from lila_data.validation import DEFAULT_VALIDATION_FRACTION
from lila_model.config import PRESETS, VARIANTS
from lila_net.config.section import ConfigError, Section, setting
from lila_net.credentials import DEFAULT_CREDENTIAL_TTL_S
from lila_net.dht.keys import RUN_ID_PATTERN

MIB = 1024 * 1024
DAY_S = 86_400.0


def _codec_names() -> tuple[str, ...]:
    from lila_codec import CODEC_NAMES

    return CODEC_NAMES


def _aggregator_names() -> tuple[str, ...]:
    from lila_net.aggregation import AGGREGATORS

    return tuple(AGGREGATORS)


@dataclass(frozen=True, kw_only=True)
class RunSection(Section):
    """Identity of the run. ``name`` appears on the status page and prefixes every DHT key."""

    section = "run"
    name: str = setting()
    seed: int = setting(0)

    def check(self) -> None:
        if not RUN_ID_PATTERN.match(self.name):
            raise ConfigError(
                f"run.name={self.name!r}: use 1-64 letters, digits, '-', '_' or '.' (it becomes part of DHT keys)"
            )


@dataclass(frozen=True, kw_only=True)
class ModelSection(Section):
    """Which LILA model the run trains: a preset and a variant from ``lila_model``.
    ``lambda_geo`` overrides the preset's weight of the resonance loss (0 turns it off)."""

    section = "model"
    preset: str = setting("debug", choices=lambda: PRESETS)
    variant: str = setting("vanilla", choices=lambda: VARIANTS)
    lambda_geo: float | None = setting(None, ge=0)


@dataclass(frozen=True, kw_only=True)
class DataSection(Section):
    """Where the text comes from and how it is cut into shards.

    ``sources`` maps a short name (used in curriculum mixtures) to a source spec understood by
    ``lila_data.open_source``. ``docs_per_shard`` trades ledger size against lost work: a shard is the
    unit a peer leases, so a huge shard makes a crashed peer's lease expensive to redo, a tiny one makes
    the coordinator busy. ``validation_fraction`` of documents (by a stable hash of their id) is held out;
    peers evaluate on at most ``validation_max_docs`` of them.
    """

    section = "data"
    sources: dict[str, str] = setting(factory=lambda: {"fineweb": DEFAULT_SOURCE})
    tokenizer: str = setting(DEFAULT_TOKENIZER)
    docs_per_shard: int = setting(16, ge=1)
    validation_fraction: float = setting(DEFAULT_VALIDATION_FRACTION, gt=0.0, lt=0.5, hint="e.g. 0.05")
    validation_max_docs: int = setting(64, ge=1)

    def check(self) -> None:
        if not self.sources:
            raise ConfigError(
                'data.sources is empty: name at least one source, e.g. fineweb = "bundled:fineweb-edu-sample"'
            )


@dataclass(frozen=True, kw_only=True)
class DilocoSection(Section):
    """DiLoCo training: ``inner_steps`` (H) local AdamW steps, then one averaged outer Nesterov step.

    Tuning: a larger H sends less data per token but lets peers drift further apart; 20–100 works for
    small models, 100–500 for large ones. ``outer_lr`` 0.7 with ``outer_momentum`` 0.9 is the DiLoCo
    paper's setting; outer_lr above 1 usually diverges. ``batch_size`` is sequences per inner step per
    peer (micro_batch × grad_accum); the peer's memory plan picks the split. ``grad_clip`` 0 turns
    clipping off. ``matchmaking_time_s``: how long peers gather for a round (see
    ``peer.averaging.config.AveragingConfig``); ``averaging_timeout_s`` bounds how long a round may wait
    for a slow or dead peer. A round applies only with at least ``min_group_size`` peers.

    ``period_s`` > 0 time-boxes the inner periods for peers of different speeds: every peer trains until
    ``period_s`` seconds after its last round ended (at least one step; ``inner_steps`` no longer counts)
    and every contribution is weighted by the tokens its peer trained (``lila_net.aggregation``), so a fast
    peer never idles at the barrier and a slow one is never left out (``peer.rounds.train_period``). Set it
    to what ``inner_steps`` steps take on a typical volunteer's machine; a period shorter than one step of
    the slowest peer makes that peer late at every round (it is told so). 0 (the default): every peer runs
    exactly ``inner_steps`` steps.

    ``overlap``: start the next inner period while the round's averaging runs, and apply the averaged
    update when it arrives, one period late (``peer.overlap``): compute never waits for the network, at
    the price of an outer step one period stale. Worth it when a round's communication is a sizeable part
    of a period (slow uplinks); best with ``period_s`` so that every peer trains until the group meets.
    """

    section = "diloco"
    inner_steps: int = setting(20, ge=1)
    batch_size: int = setting(8, ge=1)
    weight_decay: float = setting(0.1, ge=0)
    grad_clip: float = setting(1.0, ge=0)
    outer_lr: float = setting(0.7, gt=0, le=2, hint="0.7 is the usual choice")
    outer_momentum: float = setting(0.9, ge=0, lt=1)
    nesterov: bool = setting(True)
    matchmaking_time_s: float = setting(3.0, gt=0)
    averaging_timeout_s: float = setting(30.0, gt=0)
    min_group_size: int = setting(1, ge=1)
    period_s: float = setting(0.0, ge=0, hint="0: every peer runs inner_steps steps")
    overlap: bool = setting(False)

    def check(self) -> None:
        if self.averaging_timeout_s <= self.matchmaking_time_s:
            raise ConfigError(
                "diloco.averaging_timeout_s must exceed diloco.matchmaking_time_s: "
                f"got {self.averaging_timeout_s} and {self.matchmaking_time_s}"
            )


@dataclass(frozen=True, kw_only=True)
class CodecSection(Section):
    """How pseudo-gradients travel between peers (see ``lila_codec``).

    ``e8`` at 4 bits is the default: about 8× less traffic than fp32 at a small relative error; 2 bits
    halves it again at a clearly larger error (``python -m bench.codec`` and ``python -m bench.network``
    measure both). Keep ``error_feedback`` on so nothing is lost over rounds. ``block_size`` is
    coordinates per fp16 scale (64–128); ``hadamard`` rotates each block first (heavy-tailed
    pseudo-gradients quantize much better rotated); ``dither`` adds subtractive dither.

    The sparse codecs (``sparse-e8``, ``sparse-int``) send, per ``chunk`` coordinates, the ``density``
    share of largest magnitude at ``bits`` bits each (what is left stays in the error-feedback residual,
    so keep ``error_feedback`` on); ``hadamard`` rotates blocks of ``block_size`` first, which usually
    hurts top-k (turn it off). At 1 % and 2 bits a contribution is ~300× smaller than fp32; a round
    gathers the group's contributions instead of re-encoding their mean (decision 0007). ``python -m bench.codec``
    (``sparse`` rows) and ``python -m bench.network`` (``sparse-*`` configs) measure them.
    """

    section = "codec"
    name: str = setting("e8", choices=_codec_names)
    bits: int = setting(4)
    block_size: int = setting(64, ge=8, le=4096, multiple_of=8, hint="64–128 is typical")
    hadamard: bool = setting(True)
    dither: bool = setting(False)
    error_feedback: bool = setting(True)
    density: float = setting(0.01, gt=0.0, le=1.0, hint="sparse codecs only; 0.01–0.03 is typical")
    chunk: int = setting(4096, ge=8, multiple_of=8, hint="sparse codecs only: coordinates per top-k chunk")

    def options(self) -> dict[str, Any]:
        """The ``lila_codec.get_codec`` options this section asks for. fp32 and fp16 take none; the
        fixed-width int8 and int4 take no ``bits``; ``rotation=None`` lets the codec pick its Hadamard
        size (the largest power of two dividing the block), 0 turns rotation off. Sparse codecs take
        ``density``, ``chunk``, ``bits`` and ``rotation`` (``block_size`` when ``hadamard``, else 0)."""
        if self.name in ("fp32", "fp16"):
            return {}
        if self.name.startswith("sparse-"):
            return {"density": self.density, "chunk": self.chunk, "bits": self.bits,
                    "rotation": self.block_size if self.hadamard else 0}
        options: dict[str, Any] = {"block": self.block_size, "rotation": None if self.hadamard else 0,
                                   "dither": self.dither}
        if self.name not in ("int8", "int4"):
            options["bits"] = self.bits
        return options

    def check(self) -> None:
        from lila_codec import get_codec

        try:
            get_codec(self.name, **self.options())
        except ValueError as exc:
            raise ConfigError(f"codec {self.name!r} with {self.options()}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class TrustSection(Section):
    """Aggregation of pseudo-gradients and the banning policy.

    ``mean`` is exact but one bad peer can ruin a round; ``centered_clip`` (the default) or ``trimmed_mean``
    bound any single peer's influence (``python -m bench.robust`` measures both against attacks).
    ``norm_bound`` rejects contributions whose norm exceeds this multiple of the group's median.

    Banning: a peer earns a strike for a round once ``strike_witnesses`` distinct part owners reported
    rejecting its contribution in that round. Each owner reports only what it rejected itself, so an
    attacker is reported by every honest owner of its group while one lying peer alone cannot get honest
    peers banned; 1 lets any single admitted peer strike anyone (only for trusted groups), and more than
    the group size minus one can never be reached (in groups of two, 2 means nobody is banned
    automatically). After ``strikes_to_ban`` strikes within the last ``strike_memory_rounds`` rounds the
    peer is banned: its session, leases and credential are revoked. Too few strikes ban peers for one
    transient glitch; too many let an attacker spoil more rounds. The memory keeps rare false alarms
    against an honest peer from adding up over a long run, while an attacker, struck every round it
    attacks, is banned after ``strikes_to_ban`` rounds; too short a memory lets an attacker that strikes
    only now and then escape.
    ``credential_ttl_s``: lifetime of the averaging credential peers renew from the coordinator; a ban
    reaches a peer that missed the heartbeat's ban list within this time (minutes to an hour).
    """

    section = "trust"
    aggregator: str = setting("centered_clip", choices=_aggregator_names)
    norm_bound: float = setting(5.0, gt=1, hint="a multiple of the median norm")
    strikes_to_ban: int = setting(3, ge=1)
    strike_witnesses: int = setting(2, ge=1, hint="2 is typical")
    strike_memory_rounds: int = setting(50, ge=1)
    credential_ttl_s: float = setting(DEFAULT_CREDENTIAL_TTL_S, ge=60, le=7 * DAY_S, hint="3600 is typical")

    def check(self) -> None:
        if self.strike_memory_rounds < self.strikes_to_ban:
            raise ConfigError(f"trust.strike_memory_rounds={self.strike_memory_rounds}: must be >= "
                              f"trust.strikes_to_ban={self.strikes_to_ban}, or no peer can ever be banned")


@dataclass(frozen=True, kw_only=True)
class CoordinatorSection(Section):
    """Coordinator timing and limits.

    - ``heartbeat_interval_s``: how often peers call in; also what a peer without a shard is told to wait.
    - ``lease_timeout_s``: a lease expires this long after its holder's last call and the holder counts
      as lost; too short and a slow peer loses its shard while still working, too long and a crashed
      peer's shard waits idle. At least three heartbeat intervals.
    - ``stall_timeout_s``: a lease also expires when its holder heartbeats but reports no progress for
      this long (a stuck peer); keep it well above the time between two progress reports.
    - ``max_leases_per_peer``: 2 lets a peer start the next shard while the last sequences of the
      previous one are still in its current batch; 1 makes batches end short at every shard boundary.
    - ``outer_step_quorum``: how many peers must report an outer step before it becomes the run's step.
    - ``session_ttl_s``: lifetime of a peer's session token.
    - ``max_message_bytes`` / ``max_send_message_bytes``: largest request accepted (RESOURCE_EXHAUSTED
      beyond) and largest reply sent; requests are small, so 4 MiB bounds memory per call with room.
    - ``rate_limit_per_s`` / ``rate_limit_burst``: calls per peer; ``join_rate_limit_per_s`` /
      ``join_rate_limit_burst``: Join calls per client address (raise them when many peers share one
      address: a NAT, or a benchmark on one machine).
    - ``handler_timeout_s``: a call taking longer answers DEADLINE_EXCEEDED (only a stuck database gets
      near it).
    - ``status_refresh_s``: how often the status snapshot (page, /api/status, /metrics) is rebuilt;
      ``history_limit``: metrics reports kept in it for the chart.
    - ``tick_interval_s``: how often lease expiry is checked; ``max_batch``: events committed to the
      ledger in one transaction; ``token_refresh_s``: how often join tokens are re-read from the ledger.
    - ``dht_auth``: run the DHT node admitted-only (credentials, signed and schema-checked records);
      off only for peers too old to present credentials.
    - ``max_sessions_per_token``: live sessions (joining or active peers) one join token may hold; a Join
      beyond it is refused. 2 lets a restarted peer join before its old session times out; give every
      machine its own token. More lets one token holder run that many peers (and witness strikes once).
    - ``max_tokens_per_doc``: most tokens (with its end-of-document token) credited per document of a
      shard: a report claiming more than (documents consumed + 1) × this is refused. Raise it only for
      sources with longer documents; it bounds what one lying peer can claim per shard.
    - ``metrics_rows_per_peer``: metrics reports kept per peer in the ledger's ``metrics`` table (older
      rows are pruned as new ones arrive); the status chart shows at most ``history_limit`` rows.
    """

    section = "coordinator"
    heartbeat_interval_s: float = setting(5.0, gt=0)
    lease_timeout_s: float = setting(30.0, gt=0)
    stall_timeout_s: float = setting(3600.0, gt=0)
    max_leases_per_peer: int = setting(2, ge=1)
    outer_step_quorum: int = setting(1, ge=1)
    session_ttl_s: float = setting(DAY_S, gt=0)
    max_message_bytes: int = setting(4 * MIB, ge=1024)
    max_send_message_bytes: int = setting(64 * MIB, ge=1024)
    rate_limit_per_s: float = setting(20.0, gt=0)
    rate_limit_burst: int = setting(40, ge=1)
    join_rate_limit_per_s: float = setting(5.0, gt=0)
    join_rate_limit_burst: int = setting(50, ge=1)
    handler_timeout_s: float = setting(10.0, gt=0)
    status_refresh_s: float = setting(1.0, gt=0)
    history_limit: int = setting(2000, ge=1)
    tick_interval_s: float = setting(1.0, gt=0)
    max_batch: int = setting(256, ge=1)
    token_refresh_s: float = setting(2.0, gt=0)
    dht_auth: bool = setting(True)
    max_sessions_per_token: int = setting(2, ge=1, hint="1 or 2 is typical")
    max_tokens_per_doc: int = setting(1_000_000, ge=1, le=2**40)
    metrics_rows_per_peer: int = setting(1000, ge=1)

    def check(self) -> None:
        if self.lease_timeout_s < 3 * self.heartbeat_interval_s:
            raise ConfigError(
                f"coordinator.lease_timeout_s={self.lease_timeout_s} is under 3 heartbeat intervals "
                f"({3 * self.heartbeat_interval_s}): raise it, or peers lose leases while still alive"
            )

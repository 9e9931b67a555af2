# SPDX-License-Identifier: AGPL-3.0-or-later
"""SQLite storage of the coordinator: the durable ledger behind the pure core.

Layout: the tables mirror the state (``meta`` for scalars, ``peers``, ``leases``, ``queued_shards``)
plus append-only ledgers (``completed_shards``, ``credits``, ``metrics``). A restart rebuilds the
state from the mirror tables alone (:meth:`Storage.load`), so start-up time does not grow with the
length of the run, and the ledgers stay queryable (``completed_shards`` has one row per completed
(stage, shard), enforced by its primary key; ``credits`` one row per credited report, unique per
(peer, report sequence number)).

:meth:`Storage.commit` writes the difference between two states and the ledger rows of the actions
in between inside one transaction. The server calls it once per batch of consecutive events (group
commit) and answers the batch's RPCs only after the commit, so every reply describes durable state.

The database runs in WAL mode. ``synchronous="NORMAL"`` (the default) survives a crash of the
coordinator process without losing a committed transaction; only an OS crash or power cut can
lose the last few. Use ``"FULL"`` to survive those too, at the cost of an fsync per commit.

A peer's ``last_seen`` and ``phase`` are volatile: a change of only those (a heartbeat) is not
written, so heartbeats cost no disk I/O. Nothing is lost by it: after a restart every live peer gets
a fresh deadline anyway (the ``Restarted`` event), and the values are written with any other change.

The file is created with mode 0600: it holds the session-signing secret and hashes of join tokens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator import actions as act
from coordinator.plan import RunPlan
from coordinator.state import (
    CoordinatorState,
    CoreConfig,
    Hardware,
    Lease,
    PeerMetrics,
    PeerRecord,
    PeerState,
    Position,
    QueuedShard,
    initial_state,
)
from lila_net.config import CoordinatorSection

logger = logging.getLogger(__name__)

DB_FILE_MODE = 0o600
SECRET_BYTES = 32
SESSION_SECRET_NAME = "session_hmac"
DEFAULT_BUSY_TIMEOUT_S = 10.0
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Versioned schema migrations: (version, SQL). Never edit a shipped entry; append a new one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE peers (
            peer_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            last_seen REAL NOT NULL,
            record TEXT NOT NULL
        );
        CREATE TABLE leases (
            lease_id TEXT PRIMARY KEY,
            stage INTEGER NOT NULL,
            shard_id TEXT NOT NULL,
            peer_id TEXT NOT NULL,
            start_docs INTEGER NOT NULL,
            start_tokens INTEGER NOT NULL,
            docs INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            granted_at REAL NOT NULL,
            renewed_at REAL NOT NULL,
            UNIQUE (stage, shard_id)
        );
        CREATE TABLE queued_shards (
            stage INTEGER NOT NULL,
            shard_id TEXT NOT NULL,
            docs INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            queue_order INTEGER NOT NULL,
            PRIMARY KEY (stage, shard_id)
        );
        CREATE TABLE completed_shards (
            stage INTEGER NOT NULL,
            shard_id TEXT NOT NULL,
            peer_id TEXT NOT NULL,
            lease_id TEXT NOT NULL,
            docs INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            completed_at REAL NOT NULL,
            PRIMARY KEY (stage, shard_id)
        );
        CREATE TABLE credits (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            peer_id TEXT NOT NULL,
            lease_id TEXT NOT NULL,
            stage INTEGER NOT NULL,
            shard_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            at REAL NOT NULL,
            UNIQUE (peer_id, seq)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE join_tokens (
            token_id TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            label TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL
        );
        CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
        """,
    ),
    (
        3,
        """
        CREATE TABLE metrics (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            peer_id TEXT NOT NULL,
            outer_step INTEGER NOT NULL,
            global_tokens INTEGER NOT NULL,
            loss REAL NOT NULL,
            val_bpb REAL,
            tokens_per_s REAL NOT NULL,
            tokens_processed INTEGER NOT NULL,
            bytes_sent INTEGER NOT NULL,
            bytes_received INTEGER NOT NULL
        );
        CREATE INDEX metrics_at ON metrics (at);
        """,
    ),
    (
        4,
        """
        CREATE TABLE strikes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            reporter TEXT NOT NULL,
            accused TEXT NOT NULL,
            libp2p_id TEXT NOT NULL,
            round INTEGER NOT NULL,
            part INTEGER NOT NULL,
            reason TEXT NOT NULL,
            norm_ratio REAL,
            witnesses INTEGER NOT NULL,
            struck INTEGER NOT NULL
        );
        CREATE INDEX strikes_accused ON strikes (accused);
        """,
    ),
    (
        5,
        """
        CREATE INDEX metrics_peer ON metrics (peer_id, id);
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_META_INT_FIELDS = ("stage_index", "global_tokens", "outer_step", "lease_counter", "queue_counter")
_META_TUPLE_FIELDS = ("cursors", "stage_tokens", "stage_completed", "growth_steps")
_META_TUPLE_DEFAULTS = {"growth_steps": -1}  # per stage, for a database written before the field existed


class StorageError(RuntimeError):
    """The database cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class JoinTokenRow:
    """A join token as stored: only its hash, never the token itself."""

    token_id: str
    token_hash: str
    label: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class StrikeRow:
    """One report of the strikes ledger (only reports naming an admitted peer are kept)."""

    at: float
    reporter: str
    accused: str
    libp2p_id: str
    round_index: int
    part: int
    reason: str
    norm_ratio: float | None
    witnesses: int
    struck: bool


@dataclass(frozen=True, slots=True)
class MetricsRow:
    """One metrics report of the history."""

    at: float
    peer_id: str
    outer_step: int
    global_tokens: int
    loss: float
    val_bpb: float | None
    tokens_per_s: float


VOLATILE_PEER_FIELDS = ("last_seen", "phase")
_DURABLE_PEER_FIELDS = tuple(
    f.name for f in dataclasses.fields(PeerRecord) if f.name not in VOLATILE_PEER_FIELDS
)


def _durably_changed(old: PeerRecord | None, new: PeerRecord) -> bool:
    """True unless only volatile fields (see the module docstring) differ."""
    return old is None or any(getattr(old, name) != getattr(new, name) for name in _DURABLE_PEER_FIELDS)


def _peer_to_json(peer: PeerRecord) -> str:
    hw, m = peer.hardware, peer.metrics
    data = {
        "peer_id": peer.peer_id,
        "name": peer.name,
        "hardware": {
            "device_type": hw.device_type,
            "device_name": hw.device_name,
            "memory_bytes": hw.memory_bytes,
            "cpu_cores": hw.cpu_cores,
        },
        "client_version": peer.client_version,
        "metrics_address": peer.metrics_address,
        "state": peer.state.value,
        "joined_at": peer.joined_at,
        "last_seen": peer.last_seen,
        "start_outer_step": peer.start_outer_step,
        "outer_step": peer.outer_step,
        "tokens": peer.tokens,
        "last_report_seq": peer.last_report_seq,
        "strikes": peer.strikes,
        "phase": peer.phase,
        "ban_reason": peer.ban_reason,
        "libp2p_ids": list(peer.libp2p_ids),
        "strike_rounds": list(peer.strike_rounds),
        "token_id": peer.token_id,
        "metrics": None if m is None else dataclasses.asdict(m),
    }
    return json.dumps(data, separators=(",", ":"))


def _peer_from_json(text: str) -> PeerRecord:
    data = json.loads(text)
    data["state"] = PeerState(data["state"])
    data["hardware"] = Hardware(**data["hardware"])
    if data["metrics"] is not None:
        data["metrics"] = PeerMetrics(**data["metrics"])
    data["libp2p_ids"] = tuple(data.get("libp2p_ids", ()))
    data["strike_rounds"] = tuple(data.get("strike_rounds", ()))
    return PeerRecord(**data)


def _diff(old: Any, new: Any, keys: Iterable[Any] | None) -> tuple[list[Any], list[Any]]:
    """(changed or new (key, value) pairs, deleted keys) between two mappings; shared values compare
    by identity.

    ``keys``: the only keys that may differ (from the core's dirty tracking), or None to compare all.
    """
    if old is new:
        return [], []
    if keys is None:
        keys = set(new) | set(old)
    upserts, deletes = [], []
    for key in keys:
        value = new.get(key)
        if value is None:
            if key in old:
                deletes.append(key)
        elif old.get(key) is not value:
            upserts.append((key, value))
    return upserts, deletes


class Storage:
    """The coordinator's SQLite database. Use from one thread at a time (the server's event loop).

    ``path`` ``":memory:"`` gives a throwaway database (tests only). Opening migrates an older schema
    to :data:`SCHEMA_VERSION`; a newer schema raises :class:`StorageError`. ``metrics_rows_per_peer``
    (the run config's ``coordinator.metrics_rows_per_peer``): the ``metrics`` ledger keeps only each
    peer's last that many reports, pruned in the commit that adds new ones.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        migrate_to: int = SCHEMA_VERSION,
        metrics_rows_per_peer: int = CoordinatorSection().metrics_rows_per_peer,
    ) -> None:
        if metrics_rows_per_peer < 1:
            raise StorageError(f"metrics_rows_per_peer={metrics_rows_per_peer}: keep at least 1 row per peer")
        self.metrics_rows_per_peer = metrics_rows_per_peer
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise StorageError(f"synchronous={synchronous!r}: choose one of {', '.join(SYNCHRONOUS_MODES)}")
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StorageError(
                    f"database directory {parent} does not exist: create it or pass another --db path"
                )
            if not Path(self.path).exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, DB_FILE_MODE))
            os.chmod(self.path, DB_FILE_MODE)
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate(migrate_to)

    # ------------------------------------------------------------------ schema

    @property
    def schema_version(self) -> int:
        """The schema version the database is at."""
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self, target: int) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL)"
            )
            current = self.schema_version
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {current}, newer than this lila-coordinator knows "
                    f"({SCHEMA_VERSION}): upgrade lila-coordinator"
                )
            for version, sql in MIGRATIONS:
                if current < version <= target:
                    for statement in sql.split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                        (version, time.time()),
                    )
                    logger.info("migrated %s to schema version %d", self.path, version)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database (checkpoints the WAL)."""
        self._conn.close()

    # ------------------------------------------------------------------ state

    def _meta(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def load(self, plan: RunPlan, config: CoreConfig) -> CoordinatorState:
        """The stored state of the run, or a fresh initial state (recorded at once) for a new database.

        Raises :class:`StorageError` if the database belongs to a run with a different data plan.
        """
        meta = self._meta()
        fingerprint = plan.fingerprint()
        if "plan_fingerprint" not in meta:
            state = initial_state(plan, config)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('plan_fingerprint', ?)", (fingerprint,)
                )
                self._conn.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", self._meta_rows(state)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return state
        if meta["plan_fingerprint"] != fingerprint:
            raise StorageError(
                f"{self.path} holds a run with a different data plan (sources, shard size or curriculum "
                "stages changed): start it with its original run config, or use a new --db for the new plan"
            )
        n = len(plan.stages)
        values: dict[str, Any] = {name: int(meta[name]) for name in _META_INT_FIELDS}
        for name in _META_TUPLE_FIELDS:
            if name not in meta and name in _META_TUPLE_DEFAULTS:
                meta[name] = json.dumps([_META_TUPLE_DEFAULTS[name]] * n)
            values[name] = tuple(json.loads(meta[name]))
            if len(values[name]) != n:
                raise StorageError(
                    f"{self.path}: meta {name} has {len(values[name])} stages, the plan has {n}"
                )
        peers = {
            row[0]: _peer_from_json(row[1]) for row in self._conn.execute("SELECT peer_id, record FROM peers")
        }
        leases = {}
        for row in self._conn.execute(
            "SELECT lease_id, stage, shard_id, peer_id, start_docs, start_tokens, docs, tokens, granted_at, renewed_at "
            "FROM leases ORDER BY CAST(SUBSTR(lease_id, 2) AS INTEGER)"
        ):
            lease = Lease(
                row[0],
                row[1],
                row[2],
                row[3],
                Position(row[4], row[5]),
                Position(row[6], row[7]),
                row[8],
                row[9],
            )
            leases[lease.lease_id] = lease
        returned = {
            (row[0], row[1]): QueuedShard(Position(row[2], row[3]), row[4])
            for row in self._conn.execute(
                "SELECT stage, shard_id, docs, tokens, queue_order FROM queued_shards ORDER BY queue_order"
            )
        }
        return dataclasses.replace(
            initial_state(plan, config), peers=peers, leases=leases, returned=returned, **values
        )

    @staticmethod
    def _meta_rows(state: CoordinatorState, old: CoordinatorState | None = None) -> list[tuple[str, str]]:
        rows = []
        for name in _META_INT_FIELDS:
            value = getattr(state, name)
            if old is None or getattr(old, name) != value:
                rows.append((name, str(value)))
        for name in _META_TUPLE_FIELDS:
            value = getattr(state, name)
            if old is None or getattr(old, name) != value:
                rows.append((name, json.dumps(list(value))))
        return rows

    def commit(
        self,
        old: CoordinatorState,
        new: CoordinatorState,
        actions: Iterable[act.Action],
        *,
        dirty: Mapping[str, Iterable[Any]] | None = None,
    ) -> None:
        """Persist the move from ``old`` to ``new`` (one or more events) in one transaction.

        ``dirty`` (from :func:`coordinator.core.apply_tracked`) names the keys of ``peers``, ``leases``
        and ``returned`` that may have changed; without it every key is compared.
        """
        writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        meta = self._meta_rows(new, old)
        if meta:
            writes.append(("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta))
        peers, _ = _diff(old.peers, new.peers, None if dirty is None else dirty.get("peers", ()))
        peers = [(key, p) for key, p in peers if _durably_changed(old.peers.get(key), p)]
        if peers:
            writes.append(
                (
                    "INSERT OR REPLACE INTO peers (peer_id, name, state, tokens, last_seen, record) VALUES (?,?,?,?,?,?)",
                    [
                        (p.peer_id, p.name, p.state.value, p.tokens, p.last_seen, _peer_to_json(p))
                        for _, p in peers
                    ],
                )
            )
        leases, gone = _diff(old.leases, new.leases, None if dirty is None else dirty.get("leases", ()))
        if gone:
            writes.append(("DELETE FROM leases WHERE lease_id = ?", [(lease_id,) for lease_id in gone]))
        if leases:
            writes.append(
                (
                    "INSERT OR REPLACE INTO leases (lease_id, stage, shard_id, peer_id, start_docs, start_tokens, docs, "
                    "tokens, granted_at, renewed_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            lease.lease_id,
                            lease.stage,
                            lease.shard_id,
                            lease.peer_id,
                            lease.start.docs_consumed,
                            lease.start.tokens_consumed,
                            lease.position.docs_consumed,
                            lease.position.tokens_consumed,
                            lease.granted_at,
                            lease.renewed_at,
                        )
                        for _, lease in leases
                    ],
                )
            )
        queued, unqueued = _diff(
            old.returned, new.returned, None if dirty is None else dirty.get("returned", ())
        )
        if unqueued:
            writes.append(("DELETE FROM queued_shards WHERE stage = ? AND shard_id = ?", unqueued))
        if queued:
            writes.append(
                (
                    "INSERT OR REPLACE INTO queued_shards (stage, shard_id, docs, tokens, queue_order) VALUES (?,?,?,?,?)",
                    [
                        (key[0], key[1], q.position.docs_consumed, q.position.tokens_consumed, q.order)
                        for key, q in queued
                    ],
                )
            )
        writes.extend(self._ledger_rows(actions))
        reporters = sorted({a.peer_id for a in actions if isinstance(a, act.MetricsRecorded)})
        if reporters:
            writes.append(
                (
                    "DELETE FROM metrics WHERE peer_id = ? AND id <= (SELECT id FROM metrics WHERE peer_id = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    [(peer_id, peer_id, self.metrics_rows_per_peer) for peer_id in reporters],
                )
            )
        if not writes:
            return
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in writes:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _ledger_rows(actions: Iterable[act.Action]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        completed, credits, metrics, strikes = [], [], [], []
        for action in actions:
            if isinstance(action, act.ShardFinished):
                completed.append(
                    (
                        action.stage,
                        action.shard_id,
                        action.peer_id,
                        action.lease_id,
                        action.position.docs_consumed,
                        action.position.tokens_consumed,
                        action.at,
                    )
                )
            elif isinstance(action, act.Credited):
                credits.append(
                    (
                        action.peer_id,
                        action.lease_id,
                        action.stage,
                        action.shard_id,
                        action.seq,
                        action.tokens,
                        action.at,
                    )
                )
            elif isinstance(action, act.StrikeRecorded) and action.accused:
                strikes.append(
                    (
                        action.at,
                        action.reporter,
                        action.accused,
                        action.libp2p_id,
                        action.round_index,
                        action.part,
                        action.reason,
                        action.norm_ratio,
                        action.witnesses,
                        int(action.struck),
                    )
                )
            elif isinstance(action, act.MetricsRecorded):
                m = action.metrics
                metrics.append(
                    (
                        m.reported_at,
                        action.peer_id,
                        m.outer_step,
                        action.global_tokens,
                        m.loss,
                        m.val_bpb,
                        m.tokens_per_s,
                        m.tokens_processed,
                        m.bytes_sent,
                        m.bytes_received,
                    )
                )
        writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        if completed:
            writes.append(
                (
                    "INSERT INTO completed_shards (stage, shard_id, peer_id, lease_id, docs, tokens, completed_at) "
                    "VALUES (?,?,?,?,?,?,?)",
                    completed,
                )
            )
        if credits:
            writes.append(
                (
                    "INSERT INTO credits (peer_id, lease_id, stage, shard_id, seq, tokens, at) VALUES (?,?,?,?,?,?,?)",
                    credits,
                )
            )
        if metrics:
            writes.append(
                (
                    "INSERT INTO metrics (at, peer_id, outer_step, global_tokens, loss, val_bpb, tokens_per_s, "
                    "tokens_processed, bytes_sent, bytes_received) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    metrics,
                )
            )
        if strikes:
            writes.append(
                (
                    "INSERT INTO strikes (at, reporter, accused, libp2p_id, round, part, reason, norm_ratio, "
                    "witnesses, struck) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    strikes,
                )
            )
        return writes

    # ------------------------------------------------------------------ ledgers

    def completed_shards(self) -> list[tuple[int, str, str]]:
        """Every completion as (stage, shard id, peer id), in completion order."""
        return [
            tuple(row)
            for row in self._conn.execute(
                "SELECT stage, shard_id, peer_id FROM completed_shards ORDER BY rowid"
            )
        ]

    def credit_totals(self) -> dict[str, int]:
        """Tokens credited per peer, summed from the credits ledger."""
        return dict(
            self._conn.execute("SELECT peer_id, SUM(tokens) FROM credits GROUP BY peer_id").fetchall()
        )

    def metrics_history(self, *, limit: int) -> list[MetricsRow]:
        """The last ``limit`` metrics reports, oldest first."""
        rows = self._conn.execute(
            "SELECT at, peer_id, outer_step, global_tokens, loss, val_bpb, tokens_per_s FROM metrics "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [MetricsRow(*row) for row in reversed(rows)]

    def strike_ledger(self, *, accused: str | None = None, limit: int = 1000) -> list[StrikeRow]:
        """The last ``limit`` strike reports (of ``accused`` only, if given), oldest first."""
        where, args = ("WHERE accused = ?", (accused,)) if accused is not None else ("", ())
        rows = self._conn.execute(
            "SELECT at, reporter, accused, libp2p_id, round, part, reason, norm_ratio, witnesses, struck "
            f"FROM strikes {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [StrikeRow(*row[:9], bool(row[9])) for row in reversed(rows)]

    # ------------------------------------------------------------------ auth material

    def secret(self, name: str = SESSION_SECRET_NAME) -> bytes:
        """A random secret of this database, created on first use (never leaves the file)."""
        row = self._conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return bytes(row[0])
        value = secrets.token_bytes(SECRET_BYTES)
        self._conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, value))
        row = self._conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])

    def add_join_token(self, row: JoinTokenRow) -> None:
        """Store a new join token (hash only)."""
        self._conn.execute(
            "INSERT INTO join_tokens (token_id, token_hash, label, created_at, expires_at, revoked_at) VALUES (?,?,?,?,?,?)",
            dataclasses.astuple(row),
        )

    def join_tokens(self) -> list[JoinTokenRow]:
        """Every join token, oldest first."""
        return [
            JoinTokenRow(*row)
            for row in self._conn.execute(
                "SELECT token_id, token_hash, label, created_at, expires_at, revoked_at FROM join_tokens ORDER BY created_at"
            )
        ]

    def join_token_by_hash(self, token_hash: str) -> JoinTokenRow | None:
        """The join token with this hash, or ``None``."""
        row = self._conn.execute(
            "SELECT token_id, token_hash, label, created_at, expires_at, revoked_at FROM join_tokens WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        return JoinTokenRow(*row) if row else None

    def revoke_join_token(self, token_id: str, *, at: float) -> bool:
        """Mark a join token revoked; False if no unrevoked token has this id."""
        cur = self._conn.execute(
            "UPDATE join_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL", (at, token_id)
        )
        return cur.rowcount == 1

    def revoked_token_ids(self) -> set[str]:
        """Ids of revoked join tokens (sessions made from them are refused)."""
        return {
            row[0]
            for row in self._conn.execute("SELECT token_id FROM join_tokens WHERE revoked_at IS NOT NULL")
        }

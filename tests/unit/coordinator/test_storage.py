# SPDX-License-Identifier: AGPL-3.0-or-later
"""SQLite storage: migrations, exact restore, refusal of foreign plans, ledgers, file mode."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from coordinator import core
from coordinator import events as ev
from coordinator.plan import synthetic_plan
from coordinator.state import Position
from coordinator.storage import SCHEMA_VERSION, Storage, StorageError
from tests.helpers.coordinator_service import core_config

PLAN = synthetic_plan([[2, 3], [4]])
CONFIG = core_config(lease_timeout_s=10.0)


def _drive(storage, state, events):
    for event, now in events:
        old = state
        state, actions = core.apply(old, event, now)
        storage.commit(old, state, actions)
    return state


def test_fresh_database_has_latest_schema_and_private_mode(tmp_path):
    path = tmp_path / "run.db"
    storage = Storage(path)
    assert storage.schema_version == SCHEMA_VERSION == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert storage.load(PLAN, CONFIG).cursors == (0, 0)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    storage.close()


def test_old_schema_is_migrated_in_place(tmp_path):
    path = tmp_path / "run.db"
    old = Storage(path, migrate_to=1)
    assert old.schema_version == 1
    state = _drive(
        old, old.load(PLAN, CONFIG), [(ev.PeerJoined("p1", "a"), 1.0), (ev.LeaseRequested("p1"), 2.0)]
    )
    old.close()
    new = Storage(path)
    assert new.schema_version == SCHEMA_VERSION
    versions = [row[0] for row in new._conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [1, 2, 3, 4, 5]
    assert new.load(PLAN, CONFIG) == state
    new.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "run.db"
    Storage(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer than this lila-coordinator knows"):
        Storage(path)


def test_restore_is_exact_and_foreign_plan_is_refused(tmp_path):
    path = tmp_path / "run.db"
    storage = Storage(path)
    state = _drive(
        storage,
        storage.load(PLAN, CONFIG),
        [
            (ev.PeerJoined("p1", "a"), 1.0),
            (ev.PeerJoined("p2", "b"), 1.0),
            (ev.LeaseRequested("p1"), 2.0),
            (ev.LeaseRequested("p2"), 2.0),
            (ev.ProgressReported("p1", "L1", 1, Position(1, 40)), 3.0),
            (ev.ShardReleased("p1", "L1", 2, Position(1, 45)), 4.0),
            (ev.ShardCompleted("p2", "L2", 1, Position(3, 70)), 5.0),
            (ev.MetricsReported("p2", 1, 3.5, None, 12.0), 6.0),
            (ev.OuterStepReported("p2", 1), 6.0),
        ],
    )
    storage.close()
    again = Storage(path)
    restored = again.load(PLAN, CONFIG)
    assert restored == state
    assert dict(restored.returned) == {
        (0, PLAN.stages[0].shards[0].shard_id): state.returned[(0, PLAN.stages[0].shards[0].shard_id)]
    }
    assert again.completed_shards() == [(0, PLAN.stages[0].shards[1].shard_id, "p2")]
    assert again.credit_totals() == {"p1": 45, "p2": 70}
    history = again.metrics_history(limit=10)
    assert [(h.peer_id, h.loss, h.val_bpb, h.global_tokens) for h in history] == [("p2", 3.5, None, 115)]
    with pytest.raises(StorageError, match="different data plan"):
        again.load(synthetic_plan([[2, 3], [5]]), CONFIG)
    again.close()


def test_failed_commit_changes_nothing(tmp_path):
    storage = Storage(tmp_path / "run.db")
    state = _drive(
        storage, storage.load(PLAN, CONFIG), [(ev.PeerJoined("p1", "a"), 1.0), (ev.LeaseRequested("p1"), 1.0)]
    )
    old = state
    state, actions = core.apply(old, ev.ShardCompleted("p1", "L1", 1, Position(2, 10)), 2.0)
    broken = [*actions, *actions]  # the same completion twice violates the ledger's primary key
    with pytest.raises(sqlite3.IntegrityError):
        storage.commit(old, state, broken)
    assert storage.load(PLAN, CONFIG) == old
    assert storage.completed_shards() == []
    storage.close()


def test_secret_is_stable_and_missing_directory_is_explained(tmp_path):
    storage = Storage(tmp_path / "run.db")
    secret = storage.secret()
    assert len(secret) == 32 and storage.secret() == secret
    storage.close()
    assert Storage(tmp_path / "run.db").secret() == secret
    with pytest.raises(StorageError, match="does not exist"):
        Storage(tmp_path / "missing" / "run.db")


def test_heartbeats_alone_write_nothing(tmp_path):
    storage = Storage(tmp_path / "run.db")
    state = _drive(storage, storage.load(PLAN, CONFIG), [(ev.PeerJoined("p1", "a"), 1.0)])
    before = storage._conn.total_changes
    old = state
    state, actions, dirty = core.apply_tracked(old, ev.Heartbeat("p1", "training"), 5.0)
    assert dirty == {"peers": {"p1"}}
    storage.commit(old, state, actions, dirty=dirty)
    assert storage._conn.total_changes == before
    restored = storage.load(PLAN, CONFIG)
    assert (restored.peers["p1"].last_seen, restored.peers["p1"].phase) == (1.0, "")
    # The next durable change of the peer writes the volatile fields with it.
    state = _drive(storage, state, [(ev.OuterStepReported("p1", 1), 6.0)])
    assert storage.load(PLAN, CONFIG) == state
    storage.close()

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The data plan the coordinator schedules: curriculum stages, each an ordered list of shards.

These are plain values so the core can be built and tested without ``lila_data``; ``planning.py``
turns a run config into a :class:`RunPlan` with ``lila_data``'s shard planner and mixture helper.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ShardKey = tuple[int, str]
"""A unit of leasable work: (stage index, shard id). The same rows may appear in several stages."""


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Rows ``[row_start, row_stop)`` of one file of one source; ``shard_id`` is stable across restarts."""

    shard_id: str
    source: str
    file: str
    row_start: int
    row_stop: int

    def __post_init__(self) -> None:
        if not self.shard_id:
            raise ValueError("ShardSpec.shard_id is empty: every shard needs a stable id")
        if not 0 <= self.row_start < self.row_stop:
            raise ValueError(
                f"shard {self.shard_id}: rows [{self.row_start}, {self.row_stop}) are empty or negative; "
                "a shard must hold at least one document"
            )

    @property
    def num_docs(self) -> int:
        """Documents in the shard; a completed lease must report exactly this many consumed."""
        return self.row_stop - self.row_start


@dataclass(frozen=True)
class StagePlan:
    """One curriculum stage: its shards in the order they are handed out and its token budget.

    ``token_budget`` ends the stage once that many tokens were credited to it (``None``: the stage
    runs until every shard is completed). A stage whose shards run out before its budget ends early.
    ``seq_len`` and ``doc_filter`` are handed to peers with each lease (0 / None: the peer decides).
    ``model_stage``: which model shape the stage trains (``lila_net.config.model_stages``; 0: the
    ``[model]`` preset); a stage whose model stage is above its predecessor's grows the model when it
    begins (the core announces the outer step). ``model_params`` / ``model_label``: that shape's trainable
    parameters and description, for the status page (0 / "": not known).
    """

    name: str
    shards: tuple[ShardSpec, ...]
    token_budget: int | None = None
    seq_len: int = 0
    doc_filter: str | None = None
    model_stage: int = 0
    model_params: int = 0
    model_label: str = ""
    _index: Mapping[str, ShardSpec] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError(
                f"stage {self.name!r} has no shards; give its mixture at least one non-empty source"
            )
        index = {s.shard_id: s for s in self.shards}
        if len(index) != len(self.shards):
            raise ValueError(
                f"stage {self.name!r} lists a shard id twice; shard ids must be unique per stage"
            )
        if self.token_budget is not None and self.token_budget <= 0:
            raise ValueError(f"stage {self.name!r}: token_budget={self.token_budget} must be > 0 or None")
        object.__setattr__(self, "_index", index)

    def shard(self, shard_id: str) -> ShardSpec | None:
        """The shard with this id, or ``None``."""
        return self._index.get(shard_id)


@dataclass(frozen=True)
class RunPlan:
    """Every stage of the run, in curriculum order."""

    stages: tuple[StagePlan, ...]

    @classmethod
    def from_stages(cls, stages: Sequence[StagePlan]) -> RunPlan:
        """Build a plan; raises ``ValueError`` if there is no stage."""
        if not stages:
            raise ValueError("a run plan needs at least one curriculum stage")
        return cls(tuple(stages))

    def grows_at(self, stage: int) -> bool:
        """True when curriculum stage ``stage`` starts a new model shape (a growth)."""
        return 0 < stage < len(self.stages) and self.stages[stage].model_stage > self.stages[stage - 1].model_stage

    def shard(self, key: ShardKey) -> ShardSpec | None:
        """The shard of a (stage, shard id) key, or ``None`` if the plan has no such shard."""
        stage, shard_id = key
        if not 0 <= stage < len(self.stages):
            return None
        return self.stages[stage].shard(shard_id)

    def fingerprint(self) -> str:
        """Hash of the stage names and shard lists; a database only restores under the same plan.

        Token budgets are left out so an organizer may extend or shorten a stage between restarts.
        """
        digest = hashlib.sha256()
        for stage in self.stages:
            digest.update(f"stage\x00{stage.name}\x00".encode())
            for shard in stage.shards:
                digest.update(
                    f"{shard.shard_id}\x00{shard.source}\x00{shard.file}\x00{shard.row_start}\x00{shard.row_stop}\x01".encode()
                )
        return digest.hexdigest()


def synthetic_plan(docs_per_stage: list[list[int]], budgets: list[int | None] | None = None) -> RunPlan:
    """A plan without real data, for tests and benchmarks: stage ``s`` gets one shard per entry of
    ``docs_per_stage[s]``, holding that many documents; ``budgets[s]`` is its token budget."""
    if budgets is not None and len(budgets) != len(docs_per_stage):
        raise ValueError(f"budgets has {len(budgets)} entries for {len(docs_per_stage)} stages")
    stages = []
    for s, sizes in enumerate(docs_per_stage):
        shards, row = [], 0
        for i, n in enumerate(sizes):
            shards.append(
                ShardSpec(f"synthetic/{s}/{i}:{row}-{row + n}", "synthetic", f"stage{s}.jsonl", row, row + n)
            )
            row += n
        stages.append(StagePlan(f"stage{s}", tuple(shards), budgets[s] if budgets else None))
    return RunPlan.from_stages(stages)

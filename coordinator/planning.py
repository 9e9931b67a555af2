# SPDX-License-Identifier: AGPL-3.0-or-later
"""Turn a run config into the coordinator's :class:`~coordinator.plan.RunPlan` with ``lila_data``.

Each stage's shard order follows its mixture: the next shard comes from the source furthest below
its share of the stage's documents so far (``lila_data.curriculum.next_source``), until every source
of the mixture is used up. The same rows appear in every stage whose mixture names their source;
the (stage, shard) key keeps their leases apart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from coordinator.plan import RunPlan, ShardSpec, StagePlan
from lila_data.curriculum import next_source
from lila_data.shards import ShardAddress, plan_shards
from lila_data.tokenizer import load_tokenizer
from lila_net.config.model_stages import model_stage_of, model_stages

if TYPE_CHECKING:
    from lila_net.config import RunConfig

logger = logging.getLogger(__name__)


def interleave(
    mixture: Mapping[str, float], shards: Mapping[str, Sequence[ShardAddress]]
) -> list[ShardAddress]:
    """Every shard of the mixture's positive-weight sources, ordered so that the running document
    counts per source follow the weights (a used-up source drops out)."""
    cursors = {name: 0 for name, weight in mixture.items() if weight > 0 and shards.get(name)}
    taken = dict.fromkeys(cursors, 0)
    order: list[ShardAddress] = []
    while cursors:
        name = next_source({n: mixture[n] for n in cursors}, {n: taken[n] for n in cursors})
        shard = shards[name][cursors[name]]
        order.append(shard)
        taken[name] += shard.num_docs
        cursors[name] += 1
        if cursors[name] == len(shards[name]):
            del cursors[name]
    return order


def plan_from_config(config: RunConfig) -> RunPlan:
    """Plan every stage of ``config``'s curriculum over its data sources (opens each source once), with the
    model shape each stage trains."""
    used = {
        name for stage in config.curriculum.stages for name, weight in stage.mixture.items() if weight > 0
    }
    shards_by_name = {
        name: plan_shards(spec, docs_per_shard=config.data.docs_per_shard)
        for name, spec in config.data.sources.items()
        if name in used
    }
    shapes = model_stages(config, vocab_size=load_tokenizer(config.data.tokenizer).vocab_size)
    params = {shape.index: shape.num_params() for shape in shapes}
    stages = []
    for index, stage in enumerate(config.curriculum.stages):
        order = interleave(stage.mixture, shards_by_name)
        specs = tuple(ShardSpec(a.shard_id, a.source, a.file, a.row_start, a.row_stop) for a in order)
        shape = model_stage_of(shapes, index)
        stages.append(
            StagePlan(
                stage.name, specs, token_budget=stage.tokens, seq_len=stage.seq_len, doc_filter=stage.filter,
                model_stage=shape.index, model_params=params[shape.index], model_label=shape.label,
            )
        )
        logger.info("stage %r: %d shards, budget %d tokens, model %s (%d parameters)", stage.name, len(specs),
                    stage.tokens, shape.label, params[shape.index])
    return RunPlan.from_stages(stages)

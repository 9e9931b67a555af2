# SPDX-License-Identifier: AGPL-3.0-or-later
"""The model shapes of a run: the ``[model]`` preset, then one more shape per curriculum stage with a growth.

Model stage 0 is the ``[model]`` preset; a curriculum stage with ``growth`` (``lila_data.curriculum``)
starts model stage k + 1, the shape :meth:`lila_model.growth.GrowthSpec.grown_config` makes of model
stage k. The coordinator shows each stage's shape and announces at which outer step each growth applies
(``HeartbeatResponse.growth_outer_steps``); every peer derives the same configs from the same run config
with :func:`model_stages`, and :func:`stage_at_step` says which shape the state of an outer step has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lila_model.config import LilaConfig, get_preset
from lila_model.growth import GrowthSpec
from lila_model.model import LilaLM

if TYPE_CHECKING:
    from lila_net.config.run_config import RunConfig


@dataclass(frozen=True, kw_only=True)
class ModelStage:
    """Model stage ``index``: trained from curriculum stage ``curriculum_stage`` on, with ``config``;
    ``growth`` made it from the previous model stage (None for stage 0)."""

    index: int
    curriculum_stage: int
    config: LilaConfig
    growth: GrowthSpec | None = None

    @property
    def label(self) -> str:
        """A short description for the status page: ``4 layers × 144 (e8)`` for the first stage, then
        how each grew, e.g. ``8 layers × 144 (zero ×2)``."""
        c = self.config
        shape = f"{c.n_layers} layers × {c.d_model}"
        if self.growth is None:
            return f"{shape} ({c.variant})"
        how = f"×{self.growth.factor}" if self.growth.factor is not None else f"to {self.growth.target}"
        return f"{shape} ({self.growth.operator} {how})"

    def num_params(self) -> int:
        """Trainable parameters of this shape (built on the meta device: no memory, no random numbers)."""
        with torch.device("meta"):
            model = LilaLM(self.config)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


def base_model_config(run: RunConfig, **overrides: Any) -> LilaConfig:
    """The ``[model]`` preset with the run's variant and ``lambda_geo``, its context (``block_size``) raised
    to the curriculum's longest sequence when that is longer (RoPE: no parameter depends on it), then
    ``overrides`` (a peer passes its tokenizer's vocab_size and its memory plan's numerics)."""
    preset = get_preset(run.model.preset)
    fields: dict[str, Any] = {"variant": run.model.variant,
                              "block_size": max(preset.block_size, run.curriculum.max_seq_len)}
    if run.model.lambda_geo is not None:
        fields["lambda_geo"] = run.model.lambda_geo
    return get_preset(run.model.preset, **{**fields, **overrides})


def model_stages(run: RunConfig, **overrides: Any) -> tuple[ModelStage, ...]:
    """Every model shape of the run in order (see the module docstring); ValueError naming the curriculum
    stage whose growth does not fit the shape before it."""
    config = base_model_config(run, **overrides)
    stages = [ModelStage(index=0, curriculum_stage=0, config=config)]
    for index, stage in enumerate(run.curriculum.stages):
        if stage.growth is None:
            continue
        try:
            config = stage.growth.grown_config(config)
        except ValueError as exc:
            raise ValueError(f"curriculum stage {stage.name!r} (stages[{index}]).growth: {exc}") from None
        stages.append(ModelStage(index=len(stages), curriculum_stage=index, config=config, growth=stage.growth))
    return tuple(stages)


def model_stage_of(stages: Sequence[ModelStage], curriculum_stage: int) -> ModelStage:
    """The model stage curriculum stage ``curriculum_stage`` trains."""
    return [s for s in stages if s.curriculum_stage <= curriculum_stage][-1]


def stage_at_step(growth_outer_steps: Sequence[int], outer_step: int) -> int:
    """The model stage of the global state at ``outer_step``: how many announced growths apply at or
    before it (growth k applies right after the round that reaches ``growth_outer_steps[k - 1]``)."""
    return sum(1 for step in growth_outer_steps if 0 <= step <= outer_step)

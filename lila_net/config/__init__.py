# SPDX-License-Identifier: AGPL-3.0-or-later
"""The run config (``runs/*.toml``) and the config style every settings class of the project uses.

``load_run_config(path)`` / ``loads_run_config(text)`` give a :class:`RunConfig` whose sections
(:mod:`lila_net.config.sections`) have checked themselves; :class:`Section` and :func:`setting`
(:mod:`lila_net.config.section`) are the base other config classes derive from.
"""

from lila_net.config.model_stages import ModelStage, base_model_config, model_stages, stage_at_step
from lila_net.config.run_config import RunConfig, load_run_config, loads_run_config
from lila_net.config.section import ConfigError, Section, setting
from lila_net.config.sections import (
    CodecSection,
    CoordinatorSection,
    DataSection,
    DilocoSection,
    ModelSection,
    RunSection,
    TrustSection,
)

__all__ = [
    "CodecSection",
    "ConfigError",
    "CoordinatorSection",
    "DataSection",
    "DilocoSection",
    "ModelSection",
    "ModelStage",
    "RunConfig",
    "RunSection",
    "Section",
    "TrustSection",
    "base_model_config",
    "load_run_config",
    "loads_run_config",
    "model_stages",
    "setting",
    "stage_at_step",
]

# SPDX-License-Identifier: AGPL-3.0-or-later
"""A whole run config: every section, checked together on construction, read from and written to TOML."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lila_data.curriculum import CurriculumConfig
from lila_net.config.model_stages import model_stages
from lila_net.config.section import ConfigError, Section, field_types, setting
from lila_net.config.sections import (
    CodecSection,
    CoordinatorSection,
    DataSection,
    DilocoSection,
    ModelSection,
    RunSection,
    TrustSection,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

REQUIRED_SECTIONS = ("run", "curriculum")


@dataclass(frozen=True, kw_only=True)
class RunConfig(Section):
    """One TOML file that the coordinator, every peer and the local launcher share::

        [run]          name, seed
        [model]        preset and variant of the LILA model
        [data]         named sources, tokenizer, shard size, validation split
        [curriculum]   stages (filter, sequence length, token budget, mixture) and the LR schedule
        [diloco]       inner steps H, batch, inner/outer optimizer settings, averaging deadlines
        [codec]        how pseudo-gradients travel (lattice codec, bits, error feedback)
        [trust]        aggregation rule and banning policy
        [coordinator]  lease and heartbeat timing, message and rate limits

    Every section checks itself on construction; this class adds the rules that span sections (a
    stage's mixture names only declared sources; every stage's ``growth`` fits the model shape before it,
    :mod:`lila_net.config.model_stages`). The coordinator sends the TOML text to joining peers.
    """

    run: RunSection = setting()
    model: ModelSection = setting(factory=ModelSection)
    data: DataSection = setting(factory=DataSection)
    curriculum: CurriculumConfig = setting()
    diloco: DilocoSection = setting(factory=DilocoSection)
    codec: CodecSection = setting(factory=CodecSection)
    trust: TrustSection = setting(factory=TrustSection)
    coordinator: CoordinatorSection = setting(factory=CoordinatorSection)

    def check(self) -> None:
        for stage in self.curriculum.stages:
            unknown = sorted(set(stage.mixture) - set(self.data.sources))
            if unknown:
                raise ConfigError(
                    f"curriculum stage {stage.name!r} mixes source(s) {unknown} that [data.sources] does not "
                    f"declare; declared: {sorted(self.data.sources)}"
                )
        try:
            grows = len(model_stages(self)) > 1
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if grows and self.diloco.overlap:
            raise ConfigError("diloco.overlap = true with a curriculum growth: a round landing one period late "
                              "would meet a model of another shape; set diloco.overlap = false for staged runs")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Build and check a config from parsed TOML."""
        sections = field_types(cls)
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; known sections: {sorted(sections)}")
        for required in REQUIRED_SECTIONS:
            if required not in raw:
                raise ConfigError(f"missing section [{required}]")
        try:
            curriculum = CurriculumConfig.from_dict(raw["curriculum"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(f"[curriculum]: {exc}") from exc
        built = {name: kind.from_dict(raw.get(name, {})) for name, kind in sections.items() if name != "curriculum"}
        return cls(curriculum=curriculum, **built)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``to_toml`` writes and ``from_dict`` reads back)."""
        return {f.name: getattr(self, f.name).to_dict() for f in dataclasses.fields(self)}

    def to_toml(self) -> str:
        """Serialize to TOML text; ``loads_run_config`` of that text gives back an equal config."""
        return tomli_w.dumps(self.to_dict())


def loads_run_config(text: str, *, origin: str = "run config") -> RunConfig:
    """Parse and check run config TOML text (e.g. the copy a coordinator sends to joining peers)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from exc
    try:
        return RunConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"run config {path} does not exist; see runs/ for examples") from None
    return loads_run_config(text, origin=str(path))

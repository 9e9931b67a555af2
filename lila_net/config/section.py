# SPDX-License-Identifier: AGPL-3.0-or-later
"""The one config style of the project: frozen dataclasses that check themselves on construction.

A config class derives from :class:`Section` and declares each value with :func:`setting`, which carries
its default (the only place that default is written) and its rule::

    @dataclass(frozen=True, kw_only=True)
    class DilocoSection(Section):
        section = "diloco"
        inner_steps: int = setting(20, ge=1)
        outer_lr: float = setting(0.7, gt=0, le=2, hint="0.7 is the usual choice")

        def check(self) -> None:  # rules that span fields
            ...

Construction — directly, from TOML, or through ``dataclasses.replace`` — checks every value's type (an int
where a float is expected is accepted and stored as a float; a bool is never an int; floats must be
finite), then every rule, then :meth:`Section.check`. A bad value raises :class:`ConfigError` naming the
key (``diloco.inner_steps=0: must be >= 1``) and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the key and the fix."""


@dataclass(frozen=True)
class Rule:
    """Bounds and choices of one setting (None: no bound). ``choices`` is called when checking, so a
    registry owned by another package (codec names, model variants) is read where it is defined."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    choices: Callable[[], Collection[str]] | None = None
    hint: str = ""
    label: str = ""

    def check(self, key: str, value: Any) -> None:
        if value is None:
            return
        problem = ""
        if self.choices is not None and value not in self.choices():
            problem = f"choose one of {', '.join(map(str, self.choices()))}"
        elif self.ge is not None and value < self.ge:
            problem = f"must be >= {self.ge}"
        elif self.gt is not None and value <= self.gt:
            problem = f"must be > {self.gt}"
        elif self.le is not None and value > self.le:
            problem = f"must be <= {self.le}"
        elif self.lt is not None and value >= self.lt:
            problem = f"must be < {self.lt}"
        elif self.multiple_of is not None and value % self.multiple_of:
            problem = f"must be a multiple of {self.multiple_of}"
        if problem:
            raise ConfigError(f"{key}={value!r}: {problem}" + (f" ({self.hint})" if self.hint else ""))


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    multiple_of: int | None = None,
    choices: Callable[[], Collection[str]] | None = None,
    hint: str = "",
    label: str = "",
) -> Any:
    """A dataclass field with its default (or ``factory`` for mutable defaults) and its :class:`Rule`.
    ``hint`` is appended to an error; ``label`` replaces the key in errors (a command-line flag, say)."""
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, multiple_of=multiple_of, choices=choices, hint=hint, label=label)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"rule": rule})
    return dataclasses.field(default=default, metadata={"rule": rule})


class Section:
    """Base of every config dataclass: checks types and rules on construction (see the module doc).

    ``section`` is the name keys are reported under (``run``, ``diloco``, ``averaging``, ...)."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            key = f"{self.section}.{f.name}" if self.section else f.name
            if rule is not None and rule.label:
                key = rule.label
            value = _check_type(key, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            if rule is not None:
                rule.check(key, value)
        self.check()

    def check(self) -> None:
        """Rules that span several fields; raise :class:`ConfigError`. Override when there are any."""

    @classmethod
    def from_dict(cls, raw: Any) -> Any:
        """Build from a parsed TOML table, refusing unknown keys."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[{cls.section}] must be a table, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"[{cls.section}] has unknown key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**raw)
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"[{cls.section}]: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain data for TOML (None values left out: they are the defaults)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}  # type: ignore[call-overload]


@cache
def field_types(cls: type) -> dict[str, Any]:
    """Each field's type (annotations resolved), in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has type ``hint`` (ints widened to floats, mappings copied); else ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in typing.get_args(hint):
                return None
            raise ConfigError(f"{key} must be set")
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _check_type(key, value, options[0])
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key} must be a table of strings")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (hint is int and isinstance(value, bool)) or (isinstance(hint, type) and not isinstance(value, hint)):
        raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: must be a finite number")
    return value

# SPDX-License-Identifier: AGPL-3.0-or-later
"""The LILA model configuration (`LilaConfig`) and the preset registry.

A config is a plain keyword-only dataclass; every cross-field rule is checked in
``__post_init__`` and a violation raises ``ValueError`` naming the field and the fix.
Presets are named sizes (``debug`` … ``lila-1b``); any field can be overridden with
``get_preset(name, variant="e8", vocab_size=2048)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

VARIANTS = ("vanilla", "e8", "leech", "monster")
POSITIONS = ("rope", "learned")
LEECH_TARGETS = ("qk", "k", "q")

E8_DIM = 8
LEECH_DIM = 24
# Head sizes must be multiples of lcm(8, 24) so both lattice blocks tile every head.
HEAD_DIM_MULTIPLE = 24

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MLP_RATIO = 4.0
# The monster variant freezes its Q/K maps (2·d² per layer fewer learned weights); a 5× MLP
# adds exactly 2·d² back, so it trains as many parameters as the other variants.
MONSTER_MLP_RATIO = 5.0
MLP_HIDDEN_MULTIPLE = 8

# Squared norm of the minimal vectors of √8·Λ24 is 32: the shell the Leech resonance loss uses.
LEECH_MIN_NORM = math.sqrt(32.0)
FINE_STRUCTURE_ALPHA = 1.0 / 137.035999084

CONFIG_FORMAT_VERSION = 1


@dataclass(kw_only=True)
class LilaConfig:
    """Everything that defines a LILA model (architecture + numerics flags).

    Sizes
        ``d_model``, ``n_layers``, ``n_heads``: the head size ``d_model // n_heads`` must be a
        multiple of 24 (so 8-dim E8 and 24-dim Leech blocks tile it). ``block_size`` is the
        longest context; RoPE needs no table, so raising it costs nothing but attention time.
    Variants
        ``vanilla`` (baseline), ``e8`` (E8 attention bias + E8 resonance branch), ``leech``
        (Q/K blocks snapped to Λ24 + Leech resonance loss), ``monster`` (frozen Leech Q/K
        maps, permuted keys, α phase modulation). See docs in attention.py / resonance.py /
        monster.py for the exact maths.
    ``lambda_geo``
        Weight of the geometric (resonance) loss added to cross-entropy. 0 turns it off;
        values much above 0.1 let the regulariser dominate and bpb gets worse.
    E8 knobs
        ``e8_temperature``: softness of the E8 soft quantizer (τ in softmax(−‖z−r‖²/τ)).
        Too low (< 0.05) gives near one-hot weights and vanishing gradients; too high (> 5)
        averages all 240 roots to ~0 and the branch carries no signal.
        ``e8_strength_init``: initial gain of the resonance branch output; keep it small
        (0.01–0.1) so the untrained branch does not disturb the residual stream.
    Leech knobs
        ``leech_every``: Q/K snapping happens in every k-th layer counted back from the last
        (layers L−1, L−1−k, …; the last layer always snaps). The nearest-point decoder dominates
        a snapping layer's cost on CPU, so snapping every layer of a small model makes a step
        much slower than vanilla's: raise k to trade geometry for speed
        (``python -m bench.model`` reports step time against vanilla, ``python -m bench.leech``
        the decoder's throughput). ``leech_blocks_per_head``: how many 24-blocks of each head are
        snapped (1 … head_dim/24). ``leech_targets``: snap only the keys (``k``, default: the
        keys become a Λ24 codebook, half the decoder work of ``qk``), queries and keys
        (``qk``, twice the decoder work, so a slower step), or only the queries (``q``).
        ``leech_radius_init``: initial radius R of the shell the unit Q/K block is scaled to
        before rounding to √8·Λ24 (learned); relative snapping error ≈ 3.6 / R, so R = 32
        starts at ~11 % and larger R is gentler.
        ``leech_geo_radius`` and ``leech_geo_stride``: the resonance loss scales unit
        24-blocks of the final hidden state to this radius and measures the distance to the
        nearest lattice point on every ``leech_geo_stride``-th position (a cheap unbiased
        subsample; 1 = every position, slower).
    Monster knobs
        ``monster_alpha``: phase step per position (radians) of the hidden-state phase
        modulation; 1/137 gives a period of ~861 tokens. 0 disables it.
    Numerics
        ``mixed_precision``: bf16 autocast when the input is on CUDA (always fp32 on CPU).
        ``activation_checkpointing``: recompute blocks in the backward pass (saves activation
        memory, costs one extra forward pass per step).
    """

    variant: str = "vanilla"
    vocab_size: int = DEFAULT_VOCAB_SIZE
    block_size: int = 512
    d_model: int = 384
    n_layers: int = 12
    n_heads: int = 8
    mlp_ratio: float | None = None
    position: str = "rope"
    rope_base: float = 10000.0
    dropout: float = 0.0
    bias: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    norm_eps: float = 1e-5
    lambda_geo: float = 0.01
    e8_temperature: float = 0.5
    e8_strength_init: float = 0.01
    leech_every: int = 4
    leech_blocks_per_head: int = 1
    leech_targets: str = "k"
    leech_radius_init: float = 32.0
    leech_geo_radius: float = LEECH_MIN_NORM
    leech_geo_stride: int = 16
    monster_alpha: float = FINE_STRUCTURE_ALPHA
    mixed_precision: bool = True
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field and cross-field rule; raise ValueError naming the fix."""
        if self.variant not in VARIANTS:
            raise ValueError(f"LilaConfig.variant={self.variant!r} is unknown; use one of {VARIANTS}")
        if self.leech_targets not in LEECH_TARGETS:
            raise ValueError(f"LilaConfig.leech_targets={self.leech_targets!r} is unknown; use one of {LEECH_TARGETS}")
        if self.position not in POSITIONS:
            raise ValueError(f"LilaConfig.position={self.position!r} is unknown; use one of {POSITIONS}")
        for name in ("vocab_size", "block_size", "d_model", "n_layers", "n_heads",
                     "leech_every", "leech_blocks_per_head", "leech_geo_stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LilaConfig.{name}={value!r} must be a positive integer")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"LilaConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "choose d_model = n_heads × head_dim"
            )
        head_dim = self.d_model // self.n_heads
        if head_dim % HEAD_DIM_MULTIPLE != 0:
            raise ValueError(
                f"head size d_model/n_heads = {head_dim} is not a multiple of {HEAD_DIM_MULTIPLE}; "
                "pick d_model and n_heads so that every head tiles into 8-dim E8 and 24-dim Leech blocks "
                "(e.g. head size 48 or 96)"
            )
        if self.leech_blocks_per_head > head_dim // LEECH_DIM:
            raise ValueError(
                f"LilaConfig.leech_blocks_per_head={self.leech_blocks_per_head} exceeds the "
                f"{head_dim // LEECH_DIM} Leech blocks in a head of size {head_dim}; lower it"
            )
        if self.mlp_ratio is not None and not self.mlp_ratio > 0:
            raise ValueError(f"LilaConfig.mlp_ratio={self.mlp_ratio} must be > 0 (or None for the default)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LilaConfig.dropout={self.dropout} must be in [0, 1)")
        for name in ("rope_base", "init_std", "norm_eps", "e8_temperature", "leech_radius_init",
                     "leech_geo_radius"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"LilaConfig.{name}={value!r} must be a finite number > 0")
        for name in ("lambda_geo", "e8_strength_init", "monster_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"LilaConfig.{name}={value!r} must be a finite number")
        if self.lambda_geo < 0:
            raise ValueError(f"LilaConfig.lambda_geo={self.lambda_geo} must be >= 0 (0 disables the geo loss)")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLP, rounded up to a multiple of 8."""
        ratio = self.mlp_ratio
        if ratio is None:
            ratio = MONSTER_MLP_RATIO if self.variant == "monster" else DEFAULT_MLP_RATIO
        raw = round(ratio * self.d_model)
        return -(-raw // MLP_HIDDEN_MULTIPLE) * MLP_HIDDEN_MULTIPLE

    def leech_layer(self, layer_index: int) -> bool:
        """True when layer ``layer_index`` snaps its Q/K blocks to the Leech lattice."""
        return self.variant == "leech" and (self.n_layers - 1 - layer_index) % self.leech_every == 0

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LilaConfig:
        """Build a config from a dict (e.g. config.json); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown LilaConfig keys {unknown}; valid keys are {sorted(known)} "
                "(was the file written by a newer lila_model?)"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> LilaConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


# name -> (nominal non-embedding parameter count, architecture fields)
_PRESETS: dict[str, tuple[int, dict[str, Any]]] = {
    "debug": (1_000_000, dict(d_model=144, n_layers=4, n_heads=3, block_size=256)),
    "lila-20m": (20_000_000, dict(d_model=384, n_layers=12, n_heads=8, block_size=512)),
    "lila-125m": (125_000_000, dict(d_model=768, n_layers=18, n_heads=8, block_size=1024)),
    "lila-350m": (350_000_000, dict(d_model=1152, n_layers=22, n_heads=12, block_size=1024)),
    "lila-1b": (1_000_000_000, dict(d_model=1920, n_layers=22, n_heads=20, block_size=2048)),
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)


def nominal_params(name: str) -> int:
    """The non-embedding parameter count a preset's name promises."""
    _check_preset(name)
    return _PRESETS[name][0]


def get_preset(name: str, **overrides: Any) -> LilaConfig:
    """The preset ``name`` with ``overrides`` applied, e.g. ``get_preset("debug", variant="leech")``."""
    _check_preset(name)
    fields = dict(_PRESETS[name][1])
    known = {f.name for f in dataclasses.fields(LilaConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown LilaConfig override(s) {unknown}; valid keys are {sorted(known)}")
    fields.update(overrides)
    return LilaConfig(**fields)


def _check_preset(name: str) -> None:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Model growth: deterministic operators that turn a trained small LILA model into a larger one.

A curriculum can grow the model mid-run instead of training the large preset from scratch. Every
operator is a pure function of (state dict, config, :class:`GrowthSpec`): index copies, zeros and one
exact scale, no random numbers, so every peer that applies it to the same parameters gets bit-identical
results (the same ``params_sha256``). ``python -m bench.growth`` measures what growth buys at equal
compute (validation bpb against training FLOPs, :func:`training_flops_per_token`).

Operators (``GrowthSpec.operator``)
    ``stack`` (depth, G_stack, arXiv 2405.15319): new layer j is a copy of old layer ``j mod L``, so
        2× depth is layers [0..L−1, 0..L−1] (bottom copy first, then the whole stack again on top)
        and a target of L + m < 2L layers is [0..L−1, 0..m−1]. This CHANGES the function (the copies
        see a different residual stream); it reuses what every layer learned.
    ``zero`` (depth, function-preserving): the same copies, but each new block's output projections
        (``attn.proj``, ``mlp.proj`` and their biases, the e8 branch's ``resonance.up``) are zero, so a
        new block adds exactly 0 to the residual stream. Its other weights are copies (not zeros: a
        block whose inputs were zero too would get no gradient). ``placement`` says where the new
        blocks go: ``top`` (after the old ones) or ``bottom`` (before them). The layer index decides
        variant geometry, so the default keeps it for the old blocks: e8 picks each head's E8 root by
        (layer·H + head), so e8 needs ``top``; leech snaps layers counted from the last one, so leech
        needs ``bottom`` (or ``top`` with a multiple of ``leech_every`` new layers).
    ``widen`` (width, function-preserving): d_model × k and n_heads × k (the head size, RoPE
        frequencies and lattice blocks are unchanged). Every residual channel is duplicated k times
        (concatenated: new channel c ↦ old channel c mod d), which leaves LayerNorm's mean and
        variance over the width exactly unchanged, so every norm output is the old one repeated k
        times. Matrices that write to the residual stream (embeddings, ``attn.proj``, ``mlp.proj``,
        ``resonance.up``) repeat their rows; matrices that read it (``qkv``, ``v``, ``mlp.fc``,
        ``resonance.down``) read only the first copy (the other columns are zero), which also breaks
        the symmetry between copies after one step. New heads and new MLP units are copies of old
        ones with zero outgoing columns. The final norm's gain is divided by k so the (tied) output
        head, whose columns repeat, gives the same logits. Exact up to float summation order
        (measured < 1e-5, tests/unit/model/test_growth.py) for vanilla, leech and monster. e8 is exact
        only in layer 0: a head's E8 root comes from its index (layer·H + head), which changes with H,
        so trained bias scales of layers ≥ 1 point along other roots (``bench.growth`` reports the change).
    Losses: logits are preserved, the geometric loss need not be (new e8 blocks add their own term).

Companion tensors (outer momentum, error-feedback residual, AdamW moments) follow
:func:`grow_like`: the same index copies as their parameter; zero where the parameter is a new zero
(zero outgoing columns, ``zero``'s new output projections); for ``zero``'s new blocks every companion
is zero (a new block has no history; its copied inputs are only a starting point); a fresh parameter
(a leech radius of a layer that did not snap before) gets zeros; a scaled parameter (the final norm's
gain, 1/k) scales its companion by (1/k)^power (power 1 for momentum, residual and exp_avg, 2 for
exp_avg_sq). Stacked layers copy their companions.

Tuning: when to grow and by which operator is the curriculum's choice; ``python -m bench.growth`` compares
growth points and operators at equal FLOPs against the large model from scratch and against the small
model never grown (at its quick budget the small model alone is best: grow once the small model's curve
flattens, not earlier). e8 widening moves trained E8 biases (max |Δlogit| 1e-3 with bias scales ~0.05,
``logit_change_by_variant`` in bench/results/growth-quick.json); ``zero`` (placement top) keeps e8 exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lila_model.config import LilaConfig, get_preset
from lila_model.model import LilaLM

OPERATORS = ("stack", "zero", "widen")
DEPTH_OPERATORS = ("stack", "zero")
PLACEMENTS = ("top", "bottom")
# Output projections of a block: zero in a new ``zero`` block, so the block adds nothing.
BLOCK_OUTPUTS = ("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias", "resonance.up.weight")
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass(frozen=True, kw_only=True)
class GrowthSpec:
    """One growth step: ``operator`` with an integer ``factor`` (≥ 2) or a ``target`` preset name.

    Depth operators multiply n_layers by ``factor`` (or grow to the target's n_layers, any number
    above the current one); ``widen`` multiplies d_model and n_heads by ``factor`` (or grows to the
    target's d_model, which must be a whole multiple with the same head size). ``placement``
    (``zero`` only): ``top``/``bottom``, None picks the one that keeps the variant's geometry. The
    spec checks itself on construction; :meth:`grown_config` checks it against the model to grow.
    """

    operator: str
    factor: int | None = None
    target: str | None = None
    placement: str | None = None

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"GrowthSpec.operator={self.operator!r} is unknown; use one of {OPERATORS}")
        if (self.factor is None) == (self.target is None):
            raise ValueError("GrowthSpec needs exactly one of factor= (e.g. 2) or target= (a preset name)")
        if self.factor is not None and (not isinstance(self.factor, int) or isinstance(self.factor, bool)
                                        or self.factor < 2):
            raise ValueError(f"GrowthSpec.factor={self.factor!r} must be an integer >= 2 (for other depths give "
                             "target=, e.g. a preset; width grows by whole multiples only, see lila_model.growth)")
        if self.target is not None:
            get_preset(self.target)  # raises with the list of presets
        if self.placement is not None:
            if self.operator != "zero":
                raise ValueError(f"GrowthSpec.placement applies to operator 'zero' only, not {self.operator!r}")
            if self.placement not in PLACEMENTS:
                raise ValueError(f"GrowthSpec.placement={self.placement!r} is unknown; use one of {PLACEMENTS}")

    def grown_config(self, config: LilaConfig) -> LilaConfig:
        """The config of the grown model (every non-architecture field kept); ValueError if impossible."""
        target = get_preset(self.target, variant=config.variant) if self.target is not None else None
        if self.operator in DEPTH_OPERATORS:
            if target is not None and (target.d_model, target.n_heads) != (config.d_model, config.n_heads):
                raise ValueError(
                    f"target {self.target} has d_model={target.d_model}, n_heads={target.n_heads} but the model "
                    f"has {config.d_model}, {config.n_heads}: {self.operator!r} grows depth only; widen first "
                    "(operator='widen') or name a target of the same width")
            layers = config.n_layers * self.factor if target is None else target.n_layers
            if layers <= config.n_layers:
                raise ValueError(f"target {self.target} has {layers} layers, not more than the model's "
                                 f"{config.n_layers}: nothing to grow")
            grown = config.replace(n_layers=layers)
            if self.operator == "zero":
                self._check_placement(config, grown)
            return grown
        if target is not None:
            if target.head_dim != config.head_dim:
                raise ValueError(
                    f"target {self.target} has head size {target.head_dim}, the model {config.head_dim}: 'widen' "
                    f"adds heads of the same size; use factor=k (d_model {config.d_model}·k, n_heads {config.n_heads}·k)")
            if target.d_model % config.d_model or target.d_model <= config.d_model:
                raise ValueError(
                    f"width factor {target.d_model}/{config.d_model} = {target.d_model / config.d_model:.3g} is not a "
                    f"whole number >= 2: 'widen' copies every residual channel k times (that keeps LayerNorm exact); "
                    f"use factor=k, e.g. factor=2 (d_model {2 * config.d_model}, {2 * config.n_heads} heads)")
            if target.n_layers != config.n_layers:
                raise ValueError(f"target {self.target} has {target.n_layers} layers, the model {config.n_layers}: "
                                 "'widen' grows width only; grow depth in a separate step")
            factor = target.d_model // config.d_model
        else:
            factor = self.factor
        return config.replace(d_model=config.d_model * factor, n_heads=config.n_heads * factor)

    def resolved_placement(self, config: LilaConfig) -> str:
        """``zero``'s placement for a model of ``config``: the given one, else bottom for leech, top otherwise."""
        if self.placement is not None:
            return self.placement
        return "bottom" if config.variant == "leech" else "top"

    def _check_placement(self, config: LilaConfig, grown: LilaConfig) -> None:
        placement = self.resolved_placement(config)
        added = grown.n_layers - config.n_layers
        if config.variant == "e8" and placement == "bottom":
            raise ValueError("e8 heads take their E8 root from the layer index, which 'bottom' shifts: "
                             "use placement='top' (or None) to keep the function")
        if config.variant == "leech" and placement == "top" and added % config.leech_every:
            raise ValueError(
                f"leech snaps every {config.leech_every}-th layer counted from the last; {added} new layers on top "
                f"shift which old layers snap: use placement='bottom' (or None), or add a multiple of {config.leech_every}")


@dataclass(frozen=True)
class _Recipe:
    """How one tensor of the grown model is made from the old state (see :func:`_apply`)."""

    source: str | None  # old name; None: a fresh tensor filled with ``fill``
    index: tuple[Tensor | None, ...] = ()  # per dim: new position -> old position (None: unchanged)
    zero: tuple[Tensor | None, ...] = ()  # per dim: bool mask of new positions that are 0
    scale: float = 1.0
    fill: float = 0.0
    fresh: bool = False  # companions of this tensor start at zero


def _shapes(config: LilaConfig) -> tuple[dict[str, tuple[torch.Size, torch.dtype]], set[str]]:
    """Name -> (shape, dtype) of every state-dict tensor of a model of ``config``, and the parameter names."""
    with torch.device("meta"):
        model = LilaLM(config)
    shapes = {name: (t.shape, t.dtype) for name, t in model.state_dict().items()}
    return shapes, {name for name, _ in model.named_parameters()}


def _depth_plan(old: LilaConfig, new: LilaConfig, spec: GrowthSpec,
                shapes: Mapping[str, tuple[torch.Size, torch.dtype]]) -> dict[str, _Recipe]:
    added = new.n_layers - old.n_layers
    bottom = spec.operator == "zero" and spec.resolved_placement(old) == "bottom"
    plan: dict[str, _Recipe] = {}
    for name in shapes:
        match = _BLOCK_NAME.fullmatch(name)
        if match is None:
            plan[name] = _Recipe(name)
            continue
        j, rest = int(match.group(1)), match.group(2)
        if spec.operator == "stack":
            src, is_new = j % old.n_layers, False
        elif bottom:
            src, is_new = (j % old.n_layers, True) if j < added else (j - added, False)
        else:
            src, is_new = (j, False) if j < old.n_layers else ((j - old.n_layers) % old.n_layers, True)
        source = f"blocks.{src}.{rest}"
        if rest == "attn.log_radius" and not old.leech_layer(src):
            plan[name] = _Recipe(None, fill=math.log(old.leech_radius_init), fresh=True)
        elif is_new and rest in BLOCK_OUTPUTS:
            plan[name] = _Recipe(None, fill=0.0, fresh=True)
        else:
            plan[name] = _Recipe(source, fresh=is_new)
    return plan


def _width_plan(old: LilaConfig, new: LilaConfig,
                shapes: Mapping[str, tuple[torch.Size, torch.dtype]]) -> dict[str, _Recipe]:
    d, k = old.d_model, new.d_model // old.d_model
    resid = torch.arange(new.d_model) % d  # residual channel c -> its copy's source c mod d
    added = torch.arange(new.d_model) >= d  # second and later copies (readers see zeros there)
    heads = torch.arange(new.n_heads) % old.n_heads
    hidden = torch.arange(new.mlp_hidden) % old.mlp_hidden
    new_hidden = torch.arange(new.mlp_hidden) >= old.mlp_hidden
    qkv = torch.cat([s * d + resid for s in range(3)])  # [3d'] rows: q, k, v sections, new heads copy old ones
    plan: dict[str, _Recipe] = {}
    for name in shapes:
        rest = m.group(2) if (m := _BLOCK_NAME.fullmatch(name)) else name
        recipe = {
            "tok_emb.weight": _Recipe(name, (None, resid)),
            "pos_emb.weight": _Recipe(name, (None, resid)),
            "lm_head.weight": _Recipe(name, (None, resid)),
            "ln_f.weight": _Recipe(name, (resid,), scale=1.0 / k),
            "ln_f.bias": _Recipe(name, (resid,), scale=1.0 / k),
            "attn.qkv.weight": _Recipe(name, (qkv, resid), (None, added)),
            "attn.qkv.bias": _Recipe(name, (qkv,)),
            "attn.v.weight": _Recipe(name, (resid, resid), (None, added)),
            "attn.v.bias": _Recipe(name, (resid,)),
            "attn.proj.weight": _Recipe(name, (resid, resid), (None, added)),
            "attn.bias_scale": _Recipe(name, (heads,)),
            "attn.log_radius": _Recipe(name, (heads,)),
            "mlp.fc.weight": _Recipe(name, (hidden, resid), (None, added)),
            "mlp.fc.bias": _Recipe(name, (hidden,)),
            "mlp.proj.weight": _Recipe(name, (resid, hidden), (None, new_hidden)),
            "resonance.down.weight": _Recipe(name, (None, resid), (None, added)),
            "resonance.up.weight": _Recipe(name, (resid, None)),
        }.get(rest)
        if recipe is None:
            if rest.endswith(("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "proj.bias")):
                recipe = _Recipe(name, (resid,))
            elif rest in ("attn.qk_frame", "attn.key_perm", "resonance.strength"):
                recipe = _Recipe(name)
            else:  # a tensor this module does not know: refuse rather than guess
                raise ValueError(f"widen has no rule for {name!r}; add one to lila_model.growth._width_plan")
        plan[name] = recipe
    return plan


def _plan(config: LilaConfig, spec: GrowthSpec) -> tuple[LilaConfig, dict[str, _Recipe], dict, set[str]]:
    grown = spec.grown_config(config)
    shapes, params = _shapes(grown)
    if spec.operator in DEPTH_OPERATORS:
        plan = _depth_plan(config, grown, spec, shapes)
    else:
        plan = _width_plan(config, grown, shapes)
    return grown, plan, shapes, params


def _apply(recipe: _Recipe, old: Mapping[str, Tensor], shape: torch.Size, dtype: torch.dtype, *,
           companion: bool, power: int) -> Tensor:
    """The grown tensor: ``old[source]`` gathered along each dim, zeroed by the masks, times the scale."""
    if recipe.source is None or (companion and recipe.fresh):
        if companion:
            ref = next(iter(old.values()))
            return torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        return torch.full(shape, recipe.fill, dtype=dtype)
    if recipe.source not in old:
        raise KeyError(f"the tensors to grow have no {recipe.source!r}; pass one tensor per parameter of the "
                       "old model (named as in model.named_parameters())")
    t = old[recipe.source]
    for dim, index in enumerate(recipe.index):
        if index is not None:
            t = t.index_select(dim, index.to(t.device))
    for dim, mask in enumerate(recipe.zero):
        if mask is not None:
            view = [1] * t.dim()
            view[dim] = -1
            t = t.masked_fill(mask.to(t.device).view(view), 0)  # mask [n] viewed as [1, …, n, …, 1]
    if recipe.scale != 1.0:
        t = t * (recipe.scale ** power if companion else recipe.scale)
    t = t.clone() if t is old[recipe.source] else t
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"grown {recipe.source!r} has shape {tuple(t.shape)}, expected {tuple(shape)}: "
                         "the tensors do not belong to a model of the given config")
    return t


def grow_state_dict(state: Mapping[str, Tensor], config: LilaConfig,
                    spec: GrowthSpec) -> tuple[dict[str, Tensor], LilaConfig]:
    """The grown model's full state dict (parameters and persistent buffers) and its config."""
    grown, plan, shapes, _ = _plan(config, spec)
    out = {name: _apply(plan[name], state, *shapes[name], companion=False, power=1) for name in shapes}
    return out, grown


def grow_like(tensors: Mapping[str, Tensor], config: LilaConfig, spec: GrowthSpec, *,
              power: int = 1) -> dict[str, Tensor]:
    """Grow per-parameter companion tensors (outer momentum, residual, exp_avg: power 1; exp_avg_sq: 2).

    ``tensors`` maps every parameter name of the old model (``named_parameters``) to a tensor of that
    parameter's shape; the result maps every parameter of the grown model, in its registration order,
    by the rule in the module docstring.
    """
    if power not in (1, 2):
        raise ValueError(f"power={power}: use 1 for tensors in parameter units, 2 for squared ones (exp_avg_sq)")
    if not tensors:
        raise ValueError("grow_like got no tensors")
    _, plan, shapes, params = _plan(config, spec)
    return {name: _apply(plan[name], tensors, *shapes[name], companion=True, power=power)
            for name in shapes if name in params}


def grow_model(model: LilaLM, spec: GrowthSpec) -> LilaLM:
    """A new LilaLM of the grown config holding the grown parameters (same device, same train/eval mode).

    Built on the meta device and loaded, so it draws no random numbers.
    """
    state, grown = grow_state_dict(model.state_dict(), model.config, spec)
    device = next(model.parameters()).device
    with torch.device("meta"):
        new = LilaLM(grown)
    new.to_empty(device=device)
    new.init_buffers()
    new.load_state_dict(state, strict=True)
    return new.train(model.training)


def split_flat(flat: Tensor, model: LilaLM) -> dict[str, Tensor]:
    """A flat vector in ``peer.outer.flatten_parameters`` order as name -> tensor views of ``model``'s shapes."""
    params = [(name, p.shape) for name, p in model.named_parameters() if p.requires_grad]
    total = sum(math.prod(shape) for _, shape in params)
    if flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} values, the model {total} trainable parameters")
    out, offset = {}, 0
    for name, shape in params:
        n = math.prod(shape)
        out[name] = flat[offset:offset + n].view(shape)  # [n] -> parameter shape
        offset += n
    return out


def grow_flat(flat: Tensor, model: LilaLM, spec: GrowthSpec, *, power: int = 1) -> Tensor:
    """Grow a flat per-parameter vector of ``model`` (θ_global, outer momentum, residual) to the grown
    model's flat layout. For θ_global itself use :func:`grow_state_dict` (parameters are not companions)."""
    grown = grow_like(split_flat(flat, model), model.config, spec, power=power)
    return torch.cat([t.reshape(-1) for t in grown.values()])  # [numel of the grown model]


@torch.no_grad()
def grow_adamw_state(optimizer: torch.optim.Optimizer, model: LilaLM, new_optimizer: torch.optim.Optimizer,
                     new_model: LilaLM, spec: GrowthSpec) -> None:
    """Load ``optimizer``'s AdamW moments, grown, into ``new_optimizer`` (built on ``new_model``).

    exp_avg grows with power 1, exp_avg_sq with power 2; every parameter keeps the old step count.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    by_name: dict[str, dict[str, Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
    steps = []
    for param, state in optimizer.state.items():
        for key in by_name:
            by_name[key][names[id(param)]] = state[key]
        steps.append(state["step"])
    if len(steps) != len(names):
        raise ValueError("the optimizer has no state for every parameter yet: take one step before growing")
    grown = {key: grow_like(t, model.config, spec, power=1 if key == "exp_avg" else 2) for key, t in by_name.items()}
    step = max(steps, key=float).clone()
    for name, param in new_model.named_parameters():
        new_optimizer.state[param] = {"step": step.clone(), "exp_avg": grown["exp_avg"][name],
                                      "exp_avg_sq": grown["exp_avg_sq"][name]}


@torch.no_grad()
def logit_change(old: LilaLM, new: LilaLM, idx: Tensor) -> float:
    """max |logits_new − logits_old| on ``idx`` [B, T] (both models in eval mode for the call)."""
    modes = old.training, new.training
    old.eval(), new.eval()
    try:
        return float((new(idx).logits - old(idx).logits).abs().max())
    finally:
        old.train(modes[0]), new.train(modes[1])


def training_flops_per_token(config: LilaConfig, *, seq_len: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·T·d (Kaplan/Chinchilla counting, multiply-add = 2 FLOPs).

    N = the weight-matrix parameters a token passes through: the non-embedding parameters plus the
    output head (d·V; the embedding lookup itself is free), ×2 forward, ×3 forward + backward. Attention
    scores and the weighted sum of values add 2·T·d each per layer forward, counted for the full T×T
    (causal masking not discounted), ×3 for training. Lattice extras (E8 bias, Leech decoding, the
    frozen monster maps) are not counted; compare variants by time (``bench.model``), not by this.
    """
    with torch.device("meta"):
        model = LilaLM(config)
    n = model.num_params(non_embedding=True) + config.d_model * config.vocab_size
    return 6.0 * n + 12.0 * config.n_layers * seq_len * config.d_model

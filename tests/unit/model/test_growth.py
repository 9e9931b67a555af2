# SPDX-License-Identifier: AGPL-3.0-or-later
"""Growth operators (lila_model.growth): function preservation, determinism, companions, bad specs."""

from __future__ import annotations

import hashlib

import pytest
import torch

from lila_model.config import VARIANTS, get_preset
from lila_model.growth import (
    GrowthSpec,
    grow_adamw_state,
    grow_flat,
    grow_like,
    grow_model,
    grow_state_dict,
    logit_change,
    split_flat,
    training_flops_per_token,
)
from lila_model.model import LilaLM

VOCAB = 64
TOLERANCE = 1e-5
PERTURB = 0.05  # every parameter moves off its init, so zero-initialised scales are exercised too


def trained_like(variant: str, **overrides) -> LilaLM:
    """A tiny model whose every parameter (bias scales, radii, gains included) is off its initial value."""
    torch.manual_seed(0)
    fields = dict(variant=variant, vocab_size=VOCAB, block_size=32, n_layers=2, leech_every=1)
    fields.update(overrides)
    model = LilaLM(get_preset("debug", **fields)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB * torch.randn(p.shape, generator=gen))
    return model


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))


def digest(model: LilaLM) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_depth_growth_keeps_the_logits(variant: str) -> None:
    model = trained_like(variant)
    grown = grow_model(model, GrowthSpec(operator="zero", factor=2))
    assert grown.config.n_layers == 4
    assert logit_change(model, grown, batch()) < TOLERANCE
    new = [1, 0] if variant == "leech" else [2, 3]  # leech puts new blocks below, the others on top
    for i in new:
        assert not grown.blocks[i].attn.proj.weight.any() and not grown.blocks[i].mlp.proj.weight.any()


@pytest.mark.parametrize("variant", ["vanilla", "leech", "monster"])
def test_widening_keeps_the_logits(variant: str) -> None:
    model = trained_like(variant)
    grown = grow_model(model, GrowthSpec(operator="widen", factor=2))
    assert (grown.config.d_model, grown.config.n_heads, grown.config.head_dim) == (288, 6, 48)
    assert logit_change(model, grown, batch()) < TOLERANCE


def test_widening_e8_is_exact_where_the_head_roots_do_not_move() -> None:
    """An e8 head's root is picked by (layer·H + head): layer 0 keeps its roots, layer 1's move."""
    model = trained_like("e8")
    spec = GrowthSpec(operator="widen", factor=2)
    assert logit_change(model, grow_model(model, spec), batch()) > TOLERANCE  # trained layer-1 scales
    with torch.no_grad():
        model.blocks[1].attn.bias_scale.zero_()
    assert logit_change(model, grow_model(model, spec), batch()) < TOLERANCE


def test_width_growth_with_learned_positions_untied_head_and_biases() -> None:
    model = trained_like("vanilla", position="learned", tie_embeddings=False, bias=True)
    grown = grow_model(model, GrowthSpec(operator="widen", factor=3))
    assert grown.config.d_model == 432
    assert logit_change(model, grown, batch()) < TOLERANCE


def test_widening_duplicates_the_residual_stream_and_reads_only_the_first_copy() -> None:
    model = trained_like("vanilla")
    state, config = grow_state_dict(model.state_dict(), model.config, GrowthSpec(operator="widen", factor=2))
    d = model.config.d_model
    emb = state["tok_emb.weight"]
    assert torch.equal(emb[:, :d], emb[:, d:]) and torch.equal(emb[:, :d], model.tok_emb.weight)
    fc = state["blocks.0.mlp.fc.weight"]
    assert not fc[:, d:].any() and torch.equal(fc[: model.config.mlp_hidden, :d], model.blocks[0].mlp.fc.weight)
    assert torch.equal(state["ln_f.weight"], model.ln_f.weight.repeat(2) / 2)
    assert config.mlp_hidden == 2 * model.config.mlp_hidden


@pytest.mark.parametrize("variant", VARIANTS)
def test_stack_copies_the_layers_in_order_and_is_deterministic(variant: str) -> None:
    model = trained_like(variant)
    spec = GrowthSpec(operator="stack", factor=2)
    first, second = grow_model(model, spec), grow_model(model, spec)
    assert digest(first) == digest(second)
    assert first.config.n_layers == 4
    for j in range(4):  # G_stack order [0, 1, 0, 1]
        assert torch.equal(first.blocks[j].mlp.fc.weight, model.blocks[j % 2].mlp.fc.weight)
    assert logit_change(model, first, batch()) > TOLERANCE  # stacking changes the function
    assert first(batch()).logits.shape == (2, 24, VOCAB)


def test_growth_draws_no_random_numbers() -> None:
    model = trained_like("monster")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    grow_model(grow_model(model, GrowthSpec(operator="zero", factor=2)), GrowthSpec(operator="widen", factor=2))
    assert torch.equal(torch.get_rng_state(), before)


def test_stack_to_a_non_multiple_target_and_leech_radii_of_layers_that_start_snapping() -> None:
    model = trained_like("leech", leech_every=2, n_layers=2)  # layer 1 snaps, layer 0 does not
    state, config = grow_state_dict(model.state_dict(), model.config, GrowthSpec(operator="stack", factor=2))
    # 4 layers, every 2nd from the last snaps: 3 (copy of 1) and 1 (copy of 1) keep their radius.
    assert torch.equal(state["blocks.3.attn.log_radius"], model.blocks[1].attn.log_radius)
    model = trained_like("leech", leech_every=3, n_layers=2)  # only layer 1 snaps
    state, config = grow_state_dict(model.state_dict(), model.config, GrowthSpec(operator="stack", target="debug"))
    assert config.n_layers == 4  # [0, 1, 0, 1]; layers 3 and 0 snap, layer 0's source (0) did not
    assert torch.equal(state["blocks.0.attn.log_radius"], torch.full((3,), torch.tensor(32.0).log().item()))


def test_companions_follow_their_parameters() -> None:
    model = trained_like("e8")
    names = [n for n, _ in model.named_parameters()]
    ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    zero = grow_like(ones, model.config, GrowthSpec(operator="zero", factor=2))
    grown = grow_model(model, GrowthSpec(operator="zero", factor=2))
    assert list(zero) == [n for n, _ in grown.named_parameters()]
    assert all(zero[n].shape == p.shape for n, p in grown.named_parameters())
    assert all(zero[n].eq(1).all() for n in names)  # old blocks keep theirs
    assert all(not t.any() for n, t in zero.items() if n.startswith(("blocks.2.", "blocks.3.")))  # new: zero

    stack = grow_like(ones, model.config, GrowthSpec(operator="stack", factor=2))
    assert all(t.eq(1).all() for t in stack.values())  # stacked layers copy theirs

    spec = GrowthSpec(operator="widen", factor=2)
    wide, wide_sq = grow_like(ones, model.config, spec), grow_like(ones, model.config, spec, power=2)
    d, h = model.config.d_model, model.config.mlp_hidden
    fc, proj = wide["blocks.0.mlp.fc.weight"], wide["blocks.0.mlp.proj.weight"]
    assert fc[:, :d].eq(1).all() and not fc[:, d:].any()  # zero reader columns: zero companions
    assert proj[:, :h].eq(1).all() and not proj[:, h:].any()
    assert wide["ln_f.weight"].eq(0.5).all() and wide_sq["ln_f.weight"].eq(0.25).all()


def test_flat_vectors_and_adamw_state_grow_with_the_model() -> None:
    model = trained_like("vanilla").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = batch()
    model(idx[:, :-1], idx[:, 1:]).loss.backward()
    optimizer.step()
    spec = GrowthSpec(operator="zero", factor=2)
    grown = grow_model(model, spec)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    grown_flat = grow_flat(flat, model, spec)
    assert grown_flat.numel() == sum(p.numel() for p in grown.parameters())
    assert torch.equal(split_flat(grown_flat, grown)["blocks.1.mlp.fc.weight"], model.blocks[1].mlp.fc.weight)
    new_optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    grow_adamw_state(optimizer, model, new_optimizer, grown, spec)
    state = new_optimizer.state[grown.blocks[0].attn.qkv.weight]
    assert torch.equal(state["exp_avg_sq"], optimizer.state[model.blocks[0].attn.qkv.weight]["exp_avg_sq"])
    assert not new_optimizer.state[grown.blocks[3].attn.qkv.weight]["exp_avg"].any()
    grown(idx[:, :-1], idx[:, 1:]).loss.backward()
    new_optimizer.step()  # the loaded state is usable


def test_flops_per_token_counts_matrices_head_and_attention() -> None:
    config = get_preset("debug", vocab_size=VOCAB, n_layers=2)
    d, t = config.d_model, 16
    matrices = 2 * 12 * d * d + 2 * 2 * d + d  # qkv+proj+MLP per layer, LayerNorm gains, ln_f
    assert training_flops_per_token(config, seq_len=t) == 6 * (matrices + d * VOCAB) + 12 * 2 * t * d


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(operator="grow", factor=2), "operator='grow' is unknown"),
    (dict(operator="stack"), "exactly one of factor"),
    (dict(operator="stack", factor=2, target="lila-20m"), "exactly one of factor"),
    (dict(operator="widen", factor=1), "integer >= 2"),
    (dict(operator="widen", factor=1.5), "integer >= 2"),
    (dict(operator="stack", target="lila-2b"), "unknown preset"),
    (dict(operator="stack", factor=2, placement="top"), "operator 'zero' only"),
    (dict(operator="zero", factor=2, placement="middle"), "placement='middle' is unknown"),
])
def test_bad_specs_are_refused_on_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GrowthSpec(**kwargs)


@pytest.mark.parametrize(("variant", "kwargs", "message"), [
    ("vanilla", dict(operator="widen", target="lila-20m"), r"384/144 = 2.67 is not a whole number.*factor=2"),
    ("vanilla", dict(operator="stack", target="lila-20m"), "grows depth only; widen first"),
    ("vanilla", dict(operator="widen", target="debug"), r"144/144 = 1 is not a whole number >= 2"),
    ("vanilla", dict(operator="widen", target="lila-125m"), "head size 96, the model 48"),
    ("e8", dict(operator="zero", factor=2, placement="bottom"), "placement='top'"),
    ("leech", dict(operator="zero", factor=2, placement="top"), "placement='bottom'"),
])
def test_specs_that_do_not_fit_the_model_say_what_to_do(variant: str, kwargs: dict, message: str) -> None:
    config = get_preset("debug", variant=variant, vocab_size=VOCAB, leech_every=4, n_layers=2)
    with pytest.raises(ValueError, match=message):
        GrowthSpec(**kwargs).grown_config(config)

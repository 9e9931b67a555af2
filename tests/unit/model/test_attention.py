# SPDX-License-Identifier: AGPL-3.0-or-later
"""The attention variants do what their docstrings say, and the upstream Leech kernel is a no-op."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lila_model.attention import (
    CausalSelfAttention,
    E8Attention,
    LeechAttention,
    apply_rope,
    causal_mask,
    rope_tables,
)
from lila_model.config import get_preset
from lila_model.lattice.e8 import e8_roots
from lila_model.lattice.leech import is_leech_point, nearest_leech
from lila_model.resonance import leech_snap

B, T = 2, 12


def config(variant: str = "vanilla", **kw):
    return get_preset("debug", variant=variant, vocab_size=64, block_size=32, leech_every=1, **kw)


def rope_for(cfg, t: int = T):
    return rope_tables(torch.arange(t), cfg.head_dim, cfg.rope_base)


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return q @ k.transpose(-2, -1)  # [B, H, T, T]


def upstream_leech_kernel() -> torch.Tensor:
    """The upstream "Leech kernel": Q of a QR decomposition of a fixed banded matrix (orthogonal)."""
    base = torch.zeros(24, 24, dtype=torch.float64)
    for i in range(23):
        base[i, i], base[i, i + 1] = 2.0, 2.0
    base[-1, -1], base[-1, 0] = 2.0, -2.0
    q, _ = torch.linalg.qr(base)
    return q.float()


class KernelAttention(CausalSelfAttention):
    """The rejected design: one orthogonal matrix applied to every 24-block of both q and k."""

    def qk_transform(self, q, k, rope):
        q, k = super().qk_transform(q, k, rope)
        kernel = upstream_leech_kernel()
        q = (q.unflatten(-1, (-1, 24)) @ kernel).flatten(-2)
        k = (k.unflatten(-1, (-1, 24)) @ kernel).flatten(-2)
        return q, k


def test_orthogonal_map_on_both_q_and_k_is_a_no_op() -> None:
    torch.manual_seed(0)
    cfg = config()
    kernel = upstream_leech_kernel()
    assert torch.allclose(kernel @ kernel.T, torch.eye(24), atol=1e-6)
    vanilla = CausalSelfAttention(cfg, 0)
    q, k, _ = vanilla.project(torch.randn(B, T, cfg.d_model))
    rotated_q = (q.unflatten(-1, (-1, 24)) @ kernel).flatten(-2)
    rotated_k = (k.unflatten(-1, (-1, 24)) @ kernel).flatten(-2)
    assert (rotated_q - q).abs().max() > 0.1  # the map itself is far from the identity ...
    torch.testing.assert_close(
        scores(rotated_q, rotated_k), scores(q, k), rtol=0, atol=1e-5
    )  # ... yet cancels
    # The whole attention output is unchanged too: such a "feature" would be dead code.
    kernel_attn = KernelAttention(cfg, 0)
    kernel_attn.load_state_dict(vanilla.state_dict())
    x = torch.randn(B, T, cfg.d_model)
    with torch.no_grad():
        torch.testing.assert_close(
            kernel_attn(x, rope_for(cfg)), vanilla(x, rope_for(cfg)), rtol=0, atol=1e-5
        )


def test_leech_attention_changes_the_output_with_the_same_weights() -> None:
    torch.manual_seed(0)
    cfg = config("leech")
    vanilla = CausalSelfAttention(cfg, 0)
    leech = LeechAttention(cfg, 0)
    missing = leech.load_state_dict(vanilla.state_dict(), strict=False).missing_keys
    assert missing == ["log_radius"]
    x = torch.randn(B, T, cfg.d_model)
    with torch.no_grad():
        ref = vanilla(x, rope_for(cfg))
        out = leech(x, rope_for(cfg))
        q, k, _ = vanilla.project(x)
        q, k = vanilla.qk_transform(q, k, rope_for(cfg))
        q2, k2, _ = leech.project(x)
        q2, k2 = leech.qk_transform(q2, k2, rope_for(cfg))
    relative = (scores(q2, k2) - scores(q, k)).norm() / scores(q, k).norm()
    assert 0.01 < relative < 0.5  # a real change of the scores, not a wrecking one (R = 32)
    assert (out - ref).abs().max() > 1e-4
    # Only the first 24-block of each head is snapped; the rest is untouched.
    torch.testing.assert_close(q2[..., 24:], q[..., 24:], rtol=0, atol=0)


def test_leech_targets_choose_what_is_snapped() -> None:
    torch.manual_seed(0)
    x = torch.randn(B, T, 144)
    plain = CausalSelfAttention(config(), 0)
    q, k, _ = plain.project(x)
    q, k = plain.qk_transform(q, k, rope_for(config()))
    for targets, q_moves, k_moves in (("k", False, True), ("q", True, False), ("qk", True, True)):
        leech = LeechAttention(config("leech", leech_targets=targets), 0)
        leech.load_state_dict(plain.state_dict(), strict=False)
        with torch.no_grad():
            q2, k2, _ = leech.project(x)
            q2, k2 = leech.qk_transform(q2, k2, rope_for(config()))
        assert (not torch.equal(q2, q)) == q_moves, targets
        assert (not torch.equal(k2, k)) == k_moves, targets


def test_leech_snap_rounds_directions_to_lattice_points() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 48) * 3.0
    radius = 20.0
    y = leech_snap(x, radius)
    xb, yb = x.view(5, 2, 24), y.view(5, 2, 24)
    points = yb * radius / xb.norm(dim=-1, keepdim=True)
    assert is_leech_point(points.round()).all()
    torch.testing.assert_close(points, points.round(), rtol=0, atol=1e-4)
    torch.testing.assert_close(points.round(), nearest_leech(xb * radius / xb.norm(dim=-1, keepdim=True)))


def test_leech_snap_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 24, requires_grad=True)
    log_r = torch.tensor(math.log(16.0), requires_grad=True)
    leech_snap(x, log_r.exp()).sum().backward()
    assert x.grad is not None and log_r.grad is not None
    assert abs(float(log_r.grad)) > 0  # the radius learns
    # Straight-through: the gradient w.r.t. x is the identity plus the length term ‖b‖·e/R.
    with torch.no_grad():
        r = 16.0
        norm = x.norm(dim=-1, keepdim=True)
        u = x * r / norm
        e = nearest_leech(u) - u
        expected = 1.0 + (x / norm) * e.sum(dim=-1, keepdim=True) / r
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-5)


def test_e8_attention_starts_as_vanilla_and_adds_the_documented_bias() -> None:
    torch.manual_seed(0)
    cfg = config("e8")
    vanilla = CausalSelfAttention(cfg, 1)
    e8 = E8Attention(cfg, 1)
    e8.load_state_dict(vanilla.state_dict(), strict=False)
    x = torch.randn(B, T, cfg.d_model)
    rope = rope_for(cfg)
    with torch.no_grad():
        torch.testing.assert_close(e8(x, rope), vanilla(x, rope), rtol=0, atol=1e-6)
        e8.bias_scale.copy_(torch.tensor([1.5, -0.7, 3.0]))
        out = e8(x, rope)
        # Reference: explicit scores + s_h·u_i·w_j, explicit causal softmax.
        q, k, v = vanilla.project(x)
        roots = e8_roots()[e8.head_root_indices()]
        dirs = roots / roots.norm(dim=-1, keepdim=True)  # [H, 8]

        def align(t: torch.Tensor) -> torch.Tensor:
            tiled = F.normalize(dirs.repeat(1, cfg.head_dim // 8), dim=-1)  # [H, hd], unit
            return F.cosine_similarity(t, tiled[None, :, None, :], dim=-1)  # [B, H, T]

        u, w = align(q), align(k)
        qr, kr = apply_rope(q, rope), apply_rope(k, rope)
        logits = scores(qr, kr) / math.sqrt(cfg.head_dim)
        logits = logits + e8.bias_scale[None, :, None, None] * u[..., :, None] * w[..., None, :]
        logits = logits.masked_fill(~causal_mask(T, T, x.device), float("-inf"))
        y = torch.softmax(logits, dim=-1) @ v  # [B, H, T, hd]
        ref = vanilla.proj(y.transpose(1, 2).reshape(B, T, cfg.d_model))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - vanilla(x, rope)).abs().max() > 1e-3


def test_e8_heads_use_distinct_roots() -> None:
    cfg = get_preset("lila-20m", variant="e8", vocab_size=64)
    indices = [i for layer in range(cfg.n_layers) for i in E8Attention(cfg, layer).head_root_indices()]
    assert len(indices) == len(set(indices)) == 96  # 12 layers × 8 heads, all different roots
    assert E8Attention(config("e8"), 0).head_root_indices() == [0, 37, 74]


def test_causal_mask_for_queries_at_the_end() -> None:
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5, torch.device("cpu")), expected)
    assert torch.equal(causal_mask(3, 3, torch.device("cpu")), torch.ones(3, 3).tril().bool())


def test_rope_is_a_relative_rotation() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 48), torch.randn(1, 1, 1, 48)
    freqs = rope_tables(torch.arange(20), 48, 10000.0)
    assert freqs.shape == (20, 24)

    def dot(i: int, j: int) -> float:
        return float((apply_rope(q, freqs[i : i + 1]) * apply_rope(k, freqs[j : j + 1])).sum())

    assert math.isclose(dot(5, 2), dot(15, 12), rel_tol=1e-5)
    assert not math.isclose(dot(5, 2), dot(5, 3), rel_tol=1e-3)
    # Pair (x0, x1) turns by t·θ_0 = t radians: position 1 maps (1, 0) to (cos 1, sin 1).
    unit = torch.zeros(1, 1, 1, 48)
    unit[..., 0] = 1.0
    turned = apply_rope(unit, freqs[1:2])
    torch.testing.assert_close(turned[..., :2].flatten(), torch.tensor([math.cos(1.0), math.sin(1.0)]))
    torch.testing.assert_close(turned.norm(), unit.norm())

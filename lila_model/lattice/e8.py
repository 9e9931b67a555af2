# SPDX-License-Identifier: AGPL-3.0-or-later
"""The E8 lattice: its 240 roots and an exact, batched nearest-point decoder.

E8 = D8 ∪ (D8 + ½·1), where D8 is the set of integer vectors with an even sum
(Conway & Sloane, SPLAG ch. 20). The nearest point of D8 to y is round(y), with the
coordinate of largest rounding error re-rounded the other way when the sum is odd;
the nearest point of E8 is the closer of the D8 answer and the (D8 + ½) answer.

Speed: everything is branch-free elementwise tensor code in a *coordinate-major*
layout ``[8, N]`` (one row per coordinate), so the reductions over the 8 coordinates
are seven elementwise ops on contiguous rows instead of slow reductions over a last
dimension of size 8. Both cosets are derived from a single ``floor``: with
f = y − ⌊y⌋ and g = |f − ½|, the D8 candidate has |error| = ½ − g and the D8+½
candidate has |error| = g, so their squared distances differ by Σ(¼ − g) plus the
parity corrections. :func:`nearest_e8_cols` is written so that ``torch.compile``
fuses it into one loop (much faster than eager on CPU; ``python -m bench.codec --compile``
times both); the codec in ``lila_codec`` compiles it behind a flag.
"""

from __future__ import annotations

import itertools

import torch

E8_DIM = 8
E8_NUM_ROOTS = 240
# Squared norm of an E8 root; the Voronoi cell of E8 is {y : <y, r> <= ROOT_NORM2 / 2 for every root r}.
ROOT_NORM2 = 2.0
# Work on at most this many 8-vectors at a time in the eager path so the
# intermediates (about ten [8, chunk] tensors) stay in the L2 cache.
DEFAULT_CHUNK_VECTORS = 1 << 15


def e8_roots() -> torch.Tensor:
    """The 240 roots of E8 (vectors of squared norm 2), float32 ``[240, 8]``.

    112 of shape (±1, ±1, 0⁶) and 128 of shape (±½)⁸ with an even number of minus
    signs, generated (not tabulated).
    """
    roots: list[list[float]] = []
    for i, j in itertools.combinations(range(E8_DIM), 2):
        for si, sj in itertools.product((1.0, -1.0), repeat=2):
            v = [0.0] * E8_DIM
            v[i], v[j] = si, sj
            roots.append(v)
    for signs in itertools.product((0.5, -0.5), repeat=E8_DIM):
        if sum(1 for s in signs if s < 0) % 2 == 0:
            roots.append(list(signs))
    out = torch.tensor(roots, dtype=torch.float32)
    assert out.shape == (E8_NUM_ROOTS, E8_DIM)
    return out


def nearest_e8_cols(y: torch.Tensor) -> torch.Tensor:
    """Nearest E8 point for a coordinate-major batch ``y[8, ...]`` (float32 or float64).

    Row ``i`` holds coordinate ``i`` of every vector. Exact (ties broken
    deterministically); pure elementwise code, safe to ``torch.compile``.
    """
    if y.shape[0] != E8_DIM:
        raise ValueError(f"nearest_e8_cols expects coordinates on dim 0 (size 8), got shape {tuple(y.shape)}")
    fl = torch.floor(y)
    f = y - fl
    up = (f >= 0.5).to(y.dtype)  # 1 where rounding to the nearest integer goes up
    g = (f - 0.5).abs()  # |error| of the D8+½ candidate; ½ − g is that of the Z⁸ rounding
    # Per vector: sum of g, and the coordinate with the smallest / largest g.
    g_sum = g[0].clone()
    g_min, g_max = g[0], g[0]
    i_min = torch.zeros_like(g_min)
    i_max = torch.zeros_like(g_max)
    for i in range(1, E8_DIM):
        gi = g[i]
        g_sum = g_sum + gi
        i_min = torch.where(gi < g_min, float(i), i_min)
        g_min = torch.minimum(g_min, gi)
        i_max = torch.where(gi > g_max, float(i), i_max)
        g_max = torch.maximum(g_max, gi)
    fl_sum = fl.sum(0)
    odd_half = fl_sum - 2.0 * torch.floor(fl_sum * 0.5)  # parity of the D8+½ candidate's integer part
    int_sum = fl_sum + up.sum(0)
    odd_int = int_sum - 2.0 * torch.floor(int_sum * 0.5)  # parity of round(y)
    # dist(D8 candidate) − dist(D8+½ candidate); fixing the parity costs 1 − 2·|largest error|.
    diff = (2.0 - g_sum) + odd_int * (2.0 * g_min) - odd_half * (1.0 - 2.0 * g_max)
    use_half = (diff > 0).to(y.dtype)
    use_int = 1.0 - use_half
    base = fl + up * use_int + 0.5 * use_half
    odd = use_half * odd_half + use_int * odd_int
    flip_at = use_half * i_max + use_int * i_min
    # The flipped coordinate moves one step away from its base value, towards y:
    # D8+½: by (2·up − 1); Z⁸ rounding: by (1 − 2·up).
    direction = (2.0 * use_half - 1.0) * odd
    rows = torch.arange(E8_DIM, dtype=y.dtype, device=y.device).reshape((E8_DIM,) + (1,) * (y.dim() - 1))
    flip = (flip_at == rows).to(y.dtype) * direction * (2.0 * up - 1.0)
    return base + flip


def max_root_inner_cols(v: torch.Tensor) -> torch.Tensor:
    """max over the 240 roots r of <v, r>, for coordinate-major ``v[8, ...]``.

    This is the support function of E8's Voronoi-relevant vectors: a point y lies
    strictly inside the Voronoi cell of q·E8 iff this value is < q. For lattice points
    it is an integer. Cost: a few elementwise ops per coordinate, no sorting.
    """
    a = v.abs()
    top1 = a[0]
    top2 = torch.zeros_like(top1)
    a_sum = a[0].clone()
    a_min = a[0]
    negatives = (v[0] < 0).to(v.dtype)
    for i in range(1, E8_DIM):
        ai = a[i]
        top2 = torch.maximum(top2, torch.minimum(top1, ai))
        top1 = torch.maximum(top1, ai)
        a_sum = a_sum + ai
        a_min = torch.minimum(a_min, ai)
        negatives = negatives + (v[i] < 0).to(v.dtype)
    odd = negatives - 2.0 * torch.floor(negatives * 0.5)
    # Roots (±1, ±1, 0⁶): the two largest |v_i|. Roots (±½)⁸ with an even number of
    # minus signs: ½Σ|v_i|, less the smallest |v_i| when the sign parity is odd.
    return torch.maximum(top1 + top2, 0.5 * a_sum - odd * a_min)


def nearest_e8(x: torch.Tensor, *, chunk_vectors: int = DEFAULT_CHUNK_VECTORS) -> torch.Tensor:
    """Exact nearest point of E8 for ``x[..., 8]``; any float dtype, CPU or GPU.

    Computes in float32 (float64 stays float64) and returns the input dtype; note
    that bfloat16 cannot represent every half-integer above 128 in magnitude.
    ``chunk_vectors`` bounds the working set of the eager path: too small and the
    per-op overhead dominates, too large and the intermediates (about ten float32
    ``[8, chunk]`` tensors) fall out of the L2 cache; pick the largest chunk whose
    intermediates fit. ``python -m bench.codec`` measures E8 throughput.
    """
    if x.shape[-1:] != (E8_DIM,):
        raise ValueError(f"nearest_e8 expects a last dimension of size 8, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"nearest_e8 expects a floating tensor, got {x.dtype}")
    if chunk_vectors <= 0:
        raise ValueError(f"chunk_vectors must be positive, got {chunk_vectors}")
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = x.reshape(-1, E8_DIM)  # [N, 8]
    out = torch.empty(flat.shape, dtype=work_dtype, device=x.device)
    for start in range(0, flat.shape[0], chunk_vectors):
        part = flat[start : start + chunk_vectors].to(work_dtype).t().contiguous()  # [8, n]
        out[start : start + chunk_vectors] = nearest_e8_cols(part).t()
    return out.reshape(x.shape).to(x.dtype)

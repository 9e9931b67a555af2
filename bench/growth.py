# SPDX-License-Identifier: AGPL-3.0-or-later
"""Model growth at equal compute: a small model grown mid-run against the large model trained from scratch.

    python -m bench.growth --quick --out bench/results/growth-quick.json

Groups (each compares runs that end as the same model and spend the same training FLOPs)
    depth: ``debug`` (4 layers) stacked to 8 layers (G_stack, ``stack``) or grown with zero-output
        blocks (``zero``) after 25 % (and, for stack, 50 %) of the budget, against 8 layers from scratch;
        ``small-only`` (the 4-layer model for the whole budget, never grown) is the control that says
        whether growth pays or the large model is merely undertrained at this budget.
    width: ``debug`` widened 2× (d_model 288, 6 heads, ``widen``) after 25 %, against that width from
        scratch (skip with ``--no-width``).
The budget is the scratch model's ``--steps`` steps; a growing run trains the small model until its
growth point, grows (parameters and AdamW moments through lila_model.growth), and goes on with the grown
model until the next step would exceed the budget, so it sees more tokens for the same FLOPs. FLOPs per
token are :func:`lila_model.growth.training_flops_per_token` (6·N with the output head, plus attention;
evaluation not counted). Every run starts from the same seed, sees the same batches in the same order
(bench.model's ``batches``) and follows one learning-rate schedule keyed by the fraction of the budget
spent (bench.model's warmup + cosine ``lr_at``). Validation bpb (lila_data's ``evaluate_bpb``, held-out
split of the bundled sample) is measured ``--evals`` times along the budget and just before and after
each growth.

JSON: ``runs`` [{name, group, flops, val_bpb, curve [[flops, val_bpb], ...], growth [events]}],
``max_logit_change`` (max |Δlogit| over the function-preserving growth events, on a validation batch),
``logit_change_by_variant`` {variant: {zero, widen}} (the same check on every variant, 2 layers with
every parameter moved off its init; e8 widening is not exact, see lila_model.growth),
``flops_saved_fraction`` {run: 1 − (FLOPs the run needed to reach its scratch model's final bpb) /
(scratch FLOPs), linear between curve points and counted on the grown model's points only (from just
after the last growth; a small model that got there before growing does not count); None when it never
got there: growth did not pay}. ``small-only`` is never grown: its entry says what the small model alone
saves, the bar growth has to clear at this budget.
A PNG of the curves is written beside the JSON (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.model import ADAM_BETAS, Run, batches, lr_at, token_stream, train_step
from lila_data import iter_texts, iter_validation_texts, load_tokenizer
from lila_data.evaluate import evaluate_bpb
from lila_model.config import VARIANTS, LilaConfig, get_preset
from lila_model.growth import GrowthSpec, grow_adamw_state, grow_model, logit_change, training_flops_per_token
from lila_model.model import LilaLM

logger = logging.getLogger("bench.growth")

LR_RESOLUTION = 10_000  # the schedule's position is the budget fraction in steps of 1/LR_RESOLUTION
FUNCTION_PRESERVING = ("zero", "widen")
PERTURB = 0.05  # off-init noise of the per-variant preservation check
QUICK = dict(steps=120, width_steps=80, batch_size=8, seq_len=128, eval_docs=8, evals=6)
FULL = dict(steps=600, width_steps=400, batch_size=16, seq_len=128, eval_docs=None, evals=12)


@dataclass(frozen=True, kw_only=True)
class Arm:
    """One run: start from ``start`` and apply each (budget fraction, spec) of ``growth`` in order."""

    name: str
    group: str
    start: LilaConfig
    growth: tuple[tuple[float, GrowthSpec], ...] = ()

    def final_config(self) -> LilaConfig:
        config = self.start
        for _, spec in self.growth:
            config = spec.grown_config(config)
        return config


def arms(base: LilaConfig, *, width: bool) -> list[tuple[Arm, int]]:
    """The runs of the benchmark, each with the key of its budget (``steps`` or ``width_steps``)."""
    deep = GrowthSpec(operator="stack", factor=2).grown_config(base)
    out = [
        (Arm(name="depth/scratch", group="depth", start=deep), "steps"),
        (Arm(name="depth/stack@25%", group="depth", start=base,
             growth=((0.25, GrowthSpec(operator="stack", factor=2)),)), "steps"),
        (Arm(name="depth/stack@50%", group="depth", start=base,
             growth=((0.5, GrowthSpec(operator="stack", factor=2)),)), "steps"),
        (Arm(name="depth/zero@25%", group="depth", start=base,
             growth=((0.25, GrowthSpec(operator="zero", factor=2)),)), "steps"),
        (Arm(name="depth/small-only", group="depth", start=base), "steps"),
    ]
    if width:
        wide = GrowthSpec(operator="widen", factor=2).grown_config(base)
        out += [
            (Arm(name="width/scratch", group="width", start=wide), "width_steps"),
            (Arm(name="width/widen@25%", group="width", start=base,
                 growth=((0.25, GrowthSpec(operator="widen", factor=2)),)), "width_steps"),
        ]
    return out


def step_flops(config: LilaConfig, *, batch_size: int, seq_len: int) -> float:
    return training_flops_per_token(config, seq_len=seq_len) * batch_size * seq_len


def train_arm(arm: Arm, *, budget: float, data: list[tuple[torch.Tensor, torch.Tensor]], tokenizer: Any,
              val_texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm until its FLOPs budget is spent; its curve, growth events and final bpb."""
    def bpb(model: LilaLM) -> float:
        result = evaluate_bpb(model, tokenizer, val_texts, seq_len=args.seq_len, batch_size=args.batch_size)
        model.train()
        return result.bpb

    def optimizer(model: LilaLM) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.param_groups(args.weight_decay), lr=args.lr, betas=ADAM_BETAS)

    torch.manual_seed(args.seed)
    model = LilaLM(arm.start).train()
    run = Run(arm.name, model, optimizer(model), model)
    probe = data[0][0][:2]  # [2, T] a fixed batch for the logit check
    pending = list(arm.growth)
    marks = [budget * (i + 1) / args.evals for i in range(args.evals)]
    spent, curve, events, tokens = 0.0, [], [], 0
    for idx, targets in data:
        if pending and spent >= pending[0][0] * budget:
            _, spec = pending.pop(0)
            before = bpb(run.model)
            grown = grow_model(run.model, spec)
            change = logit_change(run.model, grown, probe)
            new_optimizer = optimizer(grown)
            grow_adamw_state(run.optimizer, run.model, new_optimizer, grown, spec)
            run.model = run.step_model = grown
            run.optimizer = new_optimizer
            after = bpb(grown)
            curve += [[spent, before], [spent, after]]
            events.append(dict(operator=spec.operator, factor=spec.factor, at_flops=spent, logit_change=change,
                               val_bpb_before=before, val_bpb_after=after, curve_index=len(curve) - 1))
            logger.info("%s: %s at %.3g FLOPs, max |Δlogit| %.2e, bpb %.4f -> %.4f",
                        arm.name, spec.operator, spent, change, before, after)
        cost = step_flops(run.model.config, batch_size=args.batch_size, seq_len=args.seq_len)
        if spent + cost > budget * (1 + 1e-9):
            break
        lr = lr_at(int(spent / budget * LR_RESOLUTION), LR_RESOLUTION, args.lr)
        train_step(run, idx, targets, lr, torch.device("cpu"))
        spent += cost
        tokens += idx.numel()
        while marks and spent >= marks[0] * (1 - 1e-9):
            marks.pop(0)
            curve.append([spent, bpb(run.model)])
            logger.info("%s: %.3g FLOPs (%d steps), val bpb %.4f", arm.name, spent, len(run.losses), curve[-1][1])
    if not curve or curve[-1][0] != spent:
        curve.append([spent, bpb(run.model)])
    return dict(name=arm.name, group=arm.group, flops=spent, val_bpb=curve[-1][1], curve=curve, growth=events,
                steps=len(run.losses), tokens=tokens, params=run.model.num_params(),
                final_config=dict(n_layers=run.model.config.n_layers, d_model=run.model.config.d_model,
                                  n_heads=run.model.config.n_heads))


def preservation_by_variant(base: LilaConfig, probe: torch.Tensor, *, seed: int) -> dict[str, dict[str, float]]:
    """max |Δlogit| of each function-preserving operator on every variant (2 layers of ``base``, every
    parameter moved off its init by N(0, PERTURB²) so zero-initialised scales count), on ``probe``."""
    out = {}
    for variant in VARIANTS:
        torch.manual_seed(seed)
        model = LilaLM(base.replace(variant=variant, n_layers=2, leech_every=1)).eval()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(PERTURB * torch.randn(p.shape, generator=gen))
        out[variant] = {op: logit_change(model, grow_model(model, GrowthSpec(operator=op, factor=2)), probe)
                        for op in FUNCTION_PRESERVING}
    return out


def flops_to_reach(curve: list[list[float]], target: float) -> float | None:
    """FLOPs at which the curve first gets to ``target`` bpb or below (linear between points), else None."""
    previous = None
    for flops, value in curve:
        if value <= target:
            if previous is None or previous[1] == value:
                return flops
            f0, v0 = previous
            return f0 + (flops - f0) * (v0 - target) / (v0 - value)
        previous = (flops, value)
    return None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's JSON body from finished runs (the scratch run of a group is named '<group>/scratch')."""
    scratch = {r["group"]: r for r in runs if r["name"] == f"{r['group']}/scratch"}
    saved: dict[str, float | None] = {}
    for r in runs:
        base = scratch.get(r["group"])
        if base is None or r is base:
            continue
        grown_from = max((e["curve_index"] for e in r["growth"]), default=0)  # the grown model's points only
        reached = flops_to_reach(r["curve"][grown_from:], base["val_bpb"])
        saved[r["name"]] = None if reached is None else 1.0 - reached / base["flops"]
        r["flops_saved_fraction"] = saved[r["name"]]
        r["bpb_vs_scratch"] = r["val_bpb"] - base["val_bpb"]
    changes = [e["logit_change"] for r in runs for e in r["growth"] if e["operator"] in FUNCTION_PRESERVING]
    return dict(runs=runs, max_logit_change=max(changes) if changes else None, flops_saved_fraction=saved)


def plot(runs: list[dict[str, Any]], path: Path) -> bool:
    """val bpb against FLOPs, one panel per group; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({r["group"] for r in runs})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for r in (r for r in runs if r["group"] == group):
            xs, ys = zip(*r["curve"], strict=True)
            ax.plot(xs, ys, marker=".", label=r["name"].split("/", 1)[1], linestyle="--" if "scratch" in r["name"]
                    else "-")
        ax.set(title=f"{group} growth at equal compute", xlabel="training FLOPs", ylabel="val bpb")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"short run: {QUICK}")
    parser.add_argument("--out", type=Path, help="write the results as JSON here (and a PNG beside it)")
    parser.add_argument("--preset", default="debug", help="the small model every growing run starts from")
    parser.add_argument("--steps", type=int, help="budget of the depth group: steps of the 2×-deep scratch model")
    parser.add_argument("--width-steps", type=int, help="budget of the width group: steps of the 2×-wide scratch model")
    parser.add_argument("--no-width", action="store_true", help="skip the width group")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--eval-docs", type=int, help="validation documents to score (default: all)")
    parser.add_argument("--evals", type=int, help="curve points along each budget")
    parser.add_argument("--source", default="bundled:fineweb-edu-sample")
    parser.add_argument("--tokenizer", default="fineweb-edu-8192")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    tokenizer = load_tokenizer(args.tokenizer)
    stream = token_stream(list(iter_texts(args.source, split="train")), tokenizer)
    val_texts = list(iter_validation_texts(args.source, max_docs=args.eval_docs))
    base = get_preset(args.preset, vocab_size=tokenizer.vocab_size, block_size=args.seq_len)
    plan = arms(base, width=not args.no_width)
    # A group's budget: its scratch model's steps (``--steps`` / ``--width-steps``) at that model's FLOPs.
    budgets = {arm.group: getattr(args, key) * step_flops(arm.start, batch_size=args.batch_size, seq_len=args.seq_len)
               for arm, key in plan if arm.name.endswith("/scratch")}
    scratch = {arm.group: arm.start for arm, _ in plan if arm.name.endswith("/scratch")}
    wrong = [arm.name for arm, _ in plan if arm.growth and arm.final_config() != scratch[arm.group]]
    if wrong:
        raise SystemExit(f"{wrong} do not end as their group's scratch model; fix bench.growth.arms")
    most_steps = max(int(budgets[arm.group] / step_flops(arm.start, batch_size=args.batch_size,
                                                         seq_len=args.seq_len)) + 1 for arm, _ in plan)
    data = list(batches(stream, steps=most_steps, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed))
    logger.info("%d train tokens, %d validation docs, %d batches", stream.numel(), len(val_texts), len(data))
    runs = [train_arm(arm, budget=budgets[arm.group], data=data, tokenizer=tokenizer, val_texts=val_texts, args=args)
            for arm, _ in plan]
    result = summarize(runs)
    result["logit_change_by_variant"] = preservation_by_variant(base, data[0][0][:2], seed=args.seed)

    print(f"\n{args.preset} → 2× depth / 2× width, batch {args.batch_size} × {args.seq_len} tokens, "
          f"{len(val_texts)} validation docs, {time.perf_counter() - started:.0f} s")
    print(f"{'run':<18} {'steps':>6} {'tokens':>8} {'GFLOPs':>9} {'val bpb':>8} {'vs scratch':>10} {'saved':>7}")
    for r in runs:
        saved = r.get("flops_saved_fraction")
        print(f"{r['name']:<18} {r['steps']:>6} {r['tokens']:>8} {r['flops'] / 1e9:>9.1f} {r['val_bpb']:>8.4f} "
              f"{r.get('bpb_vs_scratch', 0.0):>+10.4f} {'-' if saved is None else f'{saved:+.1%}':>7}")
    print(f"max |Δlogit| at function-preserving growth: {result['max_logit_change']:.2e}")
    for variant, changes in result["logit_change_by_variant"].items():
        print(f"  {variant:<8} " + "  ".join(f"{op} {value:.2e}" for op, value in changes.items()))
    if args.out:
        result["settings"] = dict(
            preset=args.preset, steps=args.steps, width_steps=None if args.no_width else args.width_steps,
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, weight_decay=args.weight_decay,
            evals=args.evals, validation_docs=len(val_texts), source=args.source, tokenizer=args.tokenizer,
            threads=args.threads, seed=args.seed, quick=args.quick, wall_s=time.perf_counter() - started,
            flops="lila_model.growth.training_flops_per_token × tokens (6·N incl. output head + 12·L·T·d)",
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        png = args.out.with_suffix(".png")
        print(f"wrote {png}" if plot(runs, png) else "matplotlib is not installed: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())

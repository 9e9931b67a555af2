# SPDX-License-Identifier: AGPL-3.0-or-later
"""The variants over several seeds: val bpb mean ± a 95% interval and the paired difference to vanilla.

    python -m bench.model --seeds 3 --tokens 3000000 --source parquet:../shared/data/python-docs \\
        --jobs 2 --out bench/results/model-seeds.json

One seed cannot separate variants that differ by less than a percent: the spread between seeds of one
variant is about as large. Here every (variant, seed) pair is one training run of ``--tokens`` tokens;
all variants of one seed start from the same ``torch.manual_seed(seed)`` and see the same batches in the
same order, so the difference to vanilla is *paired* by seed (it cancels the data order's luck). Per
variant the JSON reports the mean over seeds with a Student-t 95% interval, the mean paired difference
to vanilla with its interval and whether that interval excludes zero (``significant``), and the step
time relative to vanilla (median over seeds of the ratio of median per-step CPU seconds, one torch
thread per run).

Runs go to a pool of ``--jobs`` processes (one per core: a run uses one thread). Every finished run is
written to ``--out`` at once, and a restarted command with the same settings skips the runs already
there, so a long comparison survives an interruption. Tuning: more seeds narrow the interval as
1/√(seeds − 1)-ish (t's quantile falls too); more tokens move every variant toward its converged value,
which is the comparison the seeds' claims are about. ``--eval-docs`` caps the validation documents
(scoring is ~1/3 of a training step's cost per token).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import statistics
import time
from pathlib import Path

import torch
from scipy import stats

from bench.model import ADAM_BETAS, GRAD_CLIP, TIMING_SKIP, batches, lr_at, token_stream
from lila_data import iter_texts, iter_validation_texts, load_tokenizer
from lila_data.evaluate import evaluate_bpb
from lila_model.config import get_preset
from lila_model.model import LilaLM

logger = logging.getLogger("bench.model_seeds")

CONFIDENCE = 0.95
# Bench-only names for variant settings worth their own row: name -> (variant, config overrides).
SETTINGS: dict[str, tuple[str, dict]] = {
    "vanilla": ("vanilla", {}),
    "e8": ("e8", {}),
    "leech": ("leech", {}),
    "leech-qk": ("leech", {"leech_targets": "qk"}),
    "monster": ("monster", {}),
}
_SAME_SETTINGS = ("preset", "source", "tokenizer", "steps", "batch_size", "seq_len", "lr", "weight_decay",
                  "eval_docs")

_worker: dict = {}  # per worker process: tokenizer, training stream and validation texts, loaded once


def _load_data(tokenizer_name: str, source: str, eval_docs: int | None) -> None:
    tokenizer = load_tokenizer(tokenizer_name)
    _worker.update(
        tokenizer=tokenizer,
        stream=token_stream(list(iter_texts(source, split="train")), tokenizer),
        val_texts=list(iter_validation_texts(source, max_docs=eval_docs)),
    )


def train_one(task: dict) -> dict:
    """Train one (setting, seed) run on one thread and score it; ``task`` holds the run's settings."""
    torch.set_num_threads(1)
    tokenizer, stream = _worker["tokenizer"], _worker["stream"]
    variant, overrides = SETTINGS[task["setting"]]
    torch.manual_seed(task["seed"])
    config = get_preset(task["preset"], variant=variant, vocab_size=tokenizer.vocab_size,
                        block_size=max(task["seq_len"], 64), **overrides)
    model = LilaLM(config).train()
    optimizer = torch.optim.AdamW(model.param_groups(task["weight_decay"]), lr=task["lr"], betas=ADAM_BETAS)
    step_times: list[float] = []
    started = time.perf_counter()
    data = batches(stream, steps=task["steps"], batch_size=task["batch_size"], seq_len=task["seq_len"],
                   seed=task["seed"])
    for step, (idx, targets) in enumerate(data):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, task["steps"], task["lr"])
        cpu = time.process_time()
        loss = model(idx, targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        step_times.append(time.process_time() - cpu)
    model.eval()
    bpb = evaluate_bpb(model, tokenizer, _worker["val_texts"], seq_len=task["seq_len"],
                       batch_size=task["batch_size"])
    return dict(setting=task["setting"], seed=task["seed"], val_bpb=bpb.bpb, params=model.num_params(),
                median_step_s=statistics.median(step_times[TIMING_SKIP:] or step_times),
                wall_s=time.perf_counter() - started)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its Student-t ``CONFIDENCE`` interval (nan half-width for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    t = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def summarize(runs: list[dict], settings: list[str]) -> list[dict]:
    """Per setting: mean ± interval, paired difference to vanilla (seeds both have) and step time ratio."""
    by = {(r["setting"], r["seed"]): r for r in runs}
    base_seeds = {seed for name, seed in by if name == "vanilla"}
    rows = []
    for name in settings:
        seeds = sorted(seed for s, seed in by if s == name)
        if not seeds:
            continue
        mean, half = interval([by[name, s]["val_bpb"] for s in seeds])
        paired = [s for s in seeds if s in base_seeds]
        row = dict(name=name, seeds=seeds, val_bpb=[by[name, s]["val_bpb"] for s in seeds],
                   mean_bpb=mean, ci95_bpb=half, params=by[name, seeds[0]]["params"])
        if name != "vanilla" and paired:
            diffs = [by[name, s]["val_bpb"] - by["vanilla", s]["val_bpb"] for s in paired]
            d_mean, d_half = interval(diffs)
            row.update(diff_vs_vanilla=d_mean, ci95_diff=d_half, paired_seeds=len(paired),
                       significant=bool(d_half == d_half and abs(d_mean) > d_half),
                       step_time_ratio=statistics.median(
                           by[name, s]["median_step_s"] / by["vanilla", s]["median_step_s"] for s in paired))
        rows.append(row)
    return rows


def _previous_runs(path: Path | None, settings: dict) -> list[dict]:
    if path is None or not path.exists():
        return []
    old = json.loads(path.read_text())
    if {k: old.get("settings", {}).get(k) for k in _SAME_SETTINGS} != {k: settings[k] for k in _SAME_SETTINGS}:
        raise SystemExit(f"{path} holds runs with other settings; pass another --out or remove it")
    return list(old.get("runs", []))


def _write(path: Path | None, settings: dict, runs: list[dict], names: list[str]) -> dict:
    payload = dict(settings=settings, runs=sorted(runs, key=lambda r: (r["seed"], names.index(r["setting"]))),
                   variants=summarize(runs, names), confidence=CONFIDENCE)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def plot(payload: dict, path: Path) -> None:
    """Val bpb per seed with mean ± interval, and the paired difference to vanilla with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["variants"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, row in enumerate(rows):
        left.scatter([i] * len(row["val_bpb"]), row["val_bpb"], color="0.6", s=12)
        left.errorbar(i, row["mean_bpb"], yerr=row["ci95_bpb"], fmt="o", color="C0", capsize=4)
    left.set_xticks(range(len(rows)), [r["name"] for r in rows])
    left.set_ylabel("val bits per byte")
    left.set_title("per seed (grey), mean ± 95% interval")
    diffs = [r for r in rows if "diff_vs_vanilla" in r]
    for i, row in enumerate(diffs):
        right.errorbar(i, row["diff_vs_vanilla"], yerr=row["ci95_diff"], fmt="o",
                       color="C3" if row["significant"] else "C0", capsize=4)
    right.axhline(0.0, color="0.3", lw=0.8)
    right.set_xticks(range(len(diffs)), [r["name"] for r in diffs])
    right.set_ylabel("bpb − vanilla's (same seed)")
    right.set_title("paired difference, 95% interval (red: excludes 0)")
    settings = payload["settings"]
    fig.suptitle(f"{settings['preset']}, {settings['tokens_per_run']:,} tokens per run, {settings['source']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """``bench.model --seeds N``: every setting in ``args.variants`` (plus leech-qk) × N seeds."""
    names = list(dict.fromkeys([*args.variants, *(["leech-qk"] if "leech" in args.variants else [])]))
    unknown = set(names) - set(SETTINGS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; use {', '.join(SETTINGS)}")
    tokens_per_step = args.batch_size * args.seq_len
    settings = dict(preset=args.preset, source=args.source, tokenizer=args.tokenizer, steps=args.steps,
                    batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, weight_decay=args.weight_decay,
                    eval_docs=args.eval_docs, tokens_per_run=args.steps * tokens_per_step, seeds=args.seeds,
                    threads_per_run=1, timing="process CPU seconds per step")
    runs = _previous_runs(args.out, settings)
    done = {(r["setting"], r["seed"]) for r in runs}
    tasks = [dict(settings, setting=name, seed=args.seed + i)
             for i in range(args.seeds) for name in names if (name, args.seed + i) not in done]
    logger.info("%d runs to do (%d already in %s), %d tokens each, %d jobs", len(tasks), len(done), args.out,
                settings["tokens_per_run"], args.jobs)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs, initializer=_load_data,
                      initargs=(args.tokenizer, args.source, args.eval_docs)) as pool:
        for result in pool.imap_unordered(train_one, tasks):
            runs.append(result)
            logger.info("%s seed %d: val bpb %.4f (%.0f s)", result["setting"], result["seed"], result["val_bpb"],
                        result["wall_s"])
            payload = _write(args.out, settings, runs, names)
    payload = _write(args.out, settings, runs, names)
    if args.out:
        plot(payload, args.out.with_suffix(".png"))
    print(f"\n{args.preset}, {settings['tokens_per_run']:,} tokens per run, {args.seeds} seeds, {args.source}")
    print(f"{'variant':<9} {'val bpb (mean ± 95%)':>22} {'− vanilla (paired)':>24} {'signif.':>8} {'step×':>6}")
    for row in payload["variants"]:
        diff = (f"{row['diff_vs_vanilla']:+.4f} ± {row['ci95_diff']:.4f}" if "diff_vs_vanilla" in row else "–")
        print(f"{row['name']:<9} {row['mean_bpb']:>13.4f} ± {row['ci95_bpb']:.4f} {diff:>24} "
              f"{('yes' if row.get('significant') else 'no') if 'significant' in row else '–':>8} "
              f"{row.get('step_time_ratio', 1.0):>6.2f}")
    if args.out:
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0

# SPDX-License-Identifier: AGPL-3.0-or-later
"""Train the LILA variants at equal parameters and tokens and compare bpb, speed and memory.

    python -m bench.model --quick --out model.json [--save-checkpoint DIR]
    python -m bench.model --seeds 3 --tokens 3000000 --jobs 2 --out model-seeds.json   (bench.model_seeds)

Every variant starts from the same seed and sees the same batches in the same order; the
variants are trained round-robin (one step each in turn) so that load from other processes
on a shared machine slows them all alike. On CPU, step times are process CPU seconds with one
torch thread by default (wall time on a machine shared with other jobs swings; CPU
time of a single-threaded step does not); on CUDA they are wall seconds after a synchronize. Reported per variant: learned non-embedding
parameters, validation bits per byte on the held-out split of the source (lila_data's
``evaluate_bpb``), training tokens/s, speed relative to vanilla, step time relative to
vanilla (median over rounds of the per-round ratio; the e8 and leech variants must stay
within 1.3×), and peak memory of one training step (CUDA: ``max_memory_allocated``; CPU: weights + grads + AdamW state + the activations
autograd saves, counted with saved-tensor hooks).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lila_data import iter_texts, iter_validation_texts, load_tokenizer
from lila_data.evaluate import evaluate_bpb
from lila_model.checkpoint import save_checkpoint
from lila_model.config import VARIANTS, get_preset
from lila_model.model import LilaLM, compile_model

logger = logging.getLogger("bench.model")

STEP_TIME_LIMIT = 1.3  # e8 and leech must stay within this multiple of vanilla's step time
WARMUP_FRACTION = 0.1
FINAL_LR_FRACTION = 0.1
ADAM_BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
TIMING_SKIP = 2  # first steps of each variant are warm-up (allocator, kernels) and not timed
BYTES_PER_MB = 2**20
ADAM_STATE_COPIES = 3  # grad + exp_avg + exp_avg_sq per weight

QUICK = dict(steps=40, batch_size=8, seq_len=128, eval_docs=8)
FULL = dict(steps=300, batch_size=16, seq_len=128, eval_docs=None)


@dataclass
class Run:
    name: str
    model: LilaLM
    optimizer: torch.optim.Optimizer
    step_model: torch.nn.Module  # the model, or its torch.compile wrapper
    step_times: list[float] = field(default_factory=list)  # CPU: process CPU seconds; CUDA: wall seconds
    wall_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def token_stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All training documents as one stream: EOS doc EOS doc … EOS (as the packer frames them)."""
    ids: list[int] = [tokenizer.eos_id]
    for doc in tokenizer.encode_batch(texts):
        ids.extend(doc)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def batches(stream: torch.Tensor, *, steps: int, batch_size: int, seq_len: int, seed: int):
    """``steps`` batches (idx, targets) of random windows of the stream, the same for every variant."""
    gen = torch.Generator().manual_seed(seed)
    span = stream.numel() - seq_len - 1
    if span < 1:
        raise SystemExit(f"the training text has {stream.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    for _ in range(steps):
        starts = torch.randint(0, span, (batch_size,), generator=gen)
        rows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])  # [B, T + 1]
        yield rows[:, :-1], rows[:, 1:]


def lr_at(step: int, steps: int, peak: float) -> float:
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(run: Run, idx: torch.Tensor, targets: torch.Tensor, lr: float, device: torch.device) -> None:
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    out = run.step_model(idx, targets)
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), GRAD_CLIP)
    run.optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    run.wall_times.append(wall)
    run.step_times.append(wall if device.type == "cuda" else time.process_time() - start_cpu)
    run.losses.append(float(out.ce_loss.detach()))


def peak_memory_mb(model: LilaLM, idx: torch.Tensor, targets: torch.Tensor, device: torch.device) -> float:
    """Peak memory of one training step (see the module docstring for how it is measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        model(idx, targets).loss.backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) / BYTES_PER_MB
    saved = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(idx, targets).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (weights * (1 + ADAM_STATE_COPIES) + saved) / BYTES_PER_MB


def build_runs(args: argparse.Namespace, vocab_size: int, device: torch.device) -> list[Run]:
    runs = []
    for name in args.variants:
        overrides = dict(variant=name, vocab_size=vocab_size, block_size=max(args.seq_len, 64))
        if name == "leech":
            overrides.update(leech_every=args.leech_every, leech_geo_stride=args.leech_geo_stride,
                             leech_targets=args.leech_targets)
        torch.manual_seed(args.seed)
        model = LilaLM(get_preset(args.preset, **overrides)).to(device).train()
        optimizer = torch.optim.AdamW(model.param_groups(args.weight_decay), lr=args.lr, betas=ADAM_BETAS)
        runs.append(Run(name, model, optimizer, compile_model(model) if args.compile else model))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"short run: {QUICK}")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--save-checkpoint", type=Path, help="save the trained vanilla model here")
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; vanilla must be first")
    parser.add_argument("--source", default="bundled:fineweb-edu-sample")
    parser.add_argument("--tokenizer", default="fineweb-edu-8192")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--tokens", type=int, help="training tokens per variant (sets --steps)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds per variant; above 1: mean ± 95%% interval per variant (bench.model_seeds)")
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: runs in parallel (one per core)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--eval-docs", type=int, help="validation documents to score (default: all)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--leech-every", type=int, default=4, help="leech: snap q/k in every k-th layer")
    parser.add_argument("--leech-targets", default="k", choices=("qk", "k", "q"), help="leech: what is snapped")
    parser.add_argument("--leech-geo-stride", type=int, default=16, help="leech: geo loss on every n-th position")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (GPU runs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: CPU-time ratios are stable on a shared machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tokens is not None:
        args.steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or args.variants[0] != "vanilla" or set(args.variants) - set(VARIANTS):
        raise SystemExit(f"--variants must start with vanilla and use only {VARIANTS}; got {args.variants}")
    if args.seeds < 1 or args.jobs < 1:
        raise SystemExit(f"--seeds and --jobs must be at least 1; got {args.seeds} and {args.jobs}")
    if args.seeds > 1:
        from bench import model_seeds  # it imports this module's helpers

        return model_seeds.run(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tokenizer = load_tokenizer(args.tokenizer)
    train_texts = list(iter_texts(args.source, split="train"))
    val_texts = list(iter_validation_texts(args.source, max_docs=args.eval_docs))
    stream = token_stream(train_texts, tokenizer)
    logger.info("%d train docs (%d tokens), %d validation docs", len(train_texts), stream.numel(), len(val_texts))

    runs = build_runs(args, tokenizer.vocab_size, device)
    data = list(batches(stream, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed))
    for step, (idx, targets) in enumerate(data):
        idx, targets = idx.to(device), targets.to(device)
        lr = lr_at(step, args.steps, args.lr)
        for run in runs:
            train_step(run, idx, targets, lr, device)
        if step % 10 == 0 or step == args.steps - 1:
            logger.info("step %d: %s", step, "  ".join(f"{r.name} {r.losses[-1]:.3f}" for r in runs))

    probe_idx, probe_targets = (t.to(device) for t in data[0])
    tokens_per_step = args.batch_size * args.seq_len
    results = []
    for run in runs:
        bpb = evaluate_bpb(run.model, tokenizer, val_texts, seq_len=args.seq_len, batch_size=args.batch_size,
                           device=device)
        timed = run.step_times[TIMING_SKIP:] or run.step_times
        wall = run.wall_times[TIMING_SKIP:] or run.wall_times
        results.append(dict(
            name=run.name,
            params=run.model.num_params(),
            val_bpb=bpb.bpb,
            train_ce=statistics.mean(run.losses[-5:]),
            tokens_per_s=tokens_per_step * len(timed) / sum(timed),
            wall_tokens_per_s=tokens_per_step * len(wall) / sum(wall),
            median_step_s=statistics.median(timed),
            peak_memory_mb=peak_memory_mb(run.model, probe_idx, probe_targets, device),
        ))
    base = results[0]
    base_times = runs[0].step_times[TIMING_SKIP:] or runs[0].step_times
    for run, r in zip(runs, results, strict=True):
        times = run.step_times[TIMING_SKIP:] or run.step_times
        r["rel_speed"] = r["tokens_per_s"] / base["tokens_per_s"]
        # Median over rounds of (this variant's step) / (vanilla's step in the same round):
        # robust to other processes speeding up or slowing down the machine between rounds.
        r["step_time_ratio"] = statistics.median(t / b for t, b in zip(times, base_times, strict=True))
        r["rel_bpb"] = r["val_bpb"] / base["val_bpb"]

    print(f"\npreset {args.preset}, {args.steps} steps × {tokens_per_step} tokens, device {device}, "
          f"{args.threads} threads, {len(val_texts)} validation docs")
    print(f"{'variant':<9} {'params':>10} {'val bpb':>8} {'vs van.':>8} {'tok/s':>8} {'rel speed':>9} "
          f"{'step×':>6} {'peak MB':>8}")
    for r in results:
        print(f"{r['name']:<9} {r['params']:>10,} {r['val_bpb']:>8.4f} {r['rel_bpb']:>8.3f} {r['tokens_per_s']:>8.0f} "
              f"{r['rel_speed']:>9.2f} {r['step_time_ratio']:>6.2f} {r['peak_memory_mb']:>8.1f}")
    over = [r["name"] for r in results if r["name"] in ("e8", "leech") and r["step_time_ratio"] > STEP_TIME_LIMIT]
    print(f"step-time limit {STEP_TIME_LIMIT}× for e8/leech: " + ("FAIL " + ", ".join(over) if over else "ok"))

    if args.out:
        payload = dict(
            variants=results,
            settings=dict(preset=args.preset, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                          tokens_per_variant=tokens_per_step * args.steps, lr=args.lr, source=args.source,
                          tokenizer=args.tokenizer, device=str(device), threads=args.threads,
                          leech_every=args.leech_every, leech_geo_stride=args.leech_geo_stride,
                          leech_targets=args.leech_targets,
                          validation_docs=len(val_texts), quick=args.quick, compile=args.compile,
                          memory_method="cuda max_memory_allocated" if device.type == "cuda"
                          else "weights + grads + AdamW state + autograd-saved activations",
                          timing="wall seconds" if device.type == "cuda"
                          else "process CPU seconds per step (tokens_per_s = tokens per CPU-second)"),
            step_time_limit=STEP_TIME_LIMIT,
            step_time_ok=not over,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.save_checkpoint:
        vanilla = runs[0].model
        save_checkpoint(args.save_checkpoint, vanilla, extra=dict(
            tokenizer=args.tokenizer, source=args.source, steps=args.steps, val_bpb=results[0]["val_bpb"],
        ))
        print(f"saved the vanilla checkpoint to {args.save_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

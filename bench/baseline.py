# SPDX-License-Identifier: AGPL-3.0-or-later
"""Plain single-process training on a bench run's tokens: the references a LILA network is judged against.

The same code path as a peer's inner loop, without coordinator, DHT or averaging: the run config's model
(seeded like every peer's θ_0), its data read with :class:`lila_data.ShardReader` shard by shard in plan
order (held-out documents skipped), :class:`peer.inner.InnerTrainer` with the micro-batch of the peer's
memory plan, and the run's learning-rate schedule indexed by tokens trained. Used by ``bench.network``
for baselines (a) batch B and (b) batch N×B, and for the standalone throughput of one peer's process setup.

    python -m bench.baseline --config runs/bench-quick.toml --data parquet:/path/to/python-docs \\
        --batch-size 4 --tokens 200000 --evals 4 --out baseline.json
    python -m bench.baseline --config runs/bench-quick.toml --throughput --threads 1 --steps 20

Only single-stage, single-source curricula are supported (a bench run trains one sequence length on one
source); anything else is refused with a message that says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from lila_data import (
    ShardReader,
    curriculum_at,
    evaluate_bpb,
    iter_validation_texts,
    load_tokenizer,
    plan_shards,
)
from lila_data.tokenizer import LilaTokenizer
from lila_model.config import get_preset
from lila_model.model import LilaLM
from lila_net.config import RunConfig, load_run_config
from peer.hardware import detect_hardware
from peer.inner import InnerTrainer
from peer.outer import flatten_parameters
from peer.plan import make_plan

logger = logging.getLogger("bench.baseline")

EVAL_BATCH = 8  # windows per forward pass while evaluating (memory only; the result does not change)
DEFAULT_THROUGHPUT_WARMUP = 3
DEFAULT_THROUGHPUT_STEPS = 20


class BenchConfigError(ValueError):
    """The bench run config asks for something plain training here cannot reproduce."""


@dataclass(frozen=True)
class CurvePoint:
    """Validation bits per byte after ``tokens`` training tokens."""

    tokens: int
    val_bpb: float


@dataclass
class BaselineResult:
    """What one plain training run did. ``train_seconds`` excludes evaluations."""

    batch_size: int
    seq_len: int
    threads: int
    steps: int
    tokens: int
    train_seconds: float
    final_bpb: float
    curve: list[CurvePoint] = field(default_factory=list)
    delta: torch.Tensor | None = None  # θ(start) − θ(start + H): a real pseudo-gradient, when captured

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)

    @classmethod
    def from_json(cls, data: dict) -> BaselineResult:
        """Read back what :meth:`to_json` wrote (without the captured pseudo-gradient)."""
        fields = {k: data[k] for k in ("batch_size", "seq_len", "threads", "steps", "tokens", "train_seconds",
                                       "final_bpb")}
        return cls(**fields, curve=[CurvePoint(**p) for p in data["curve"]])

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("delta", "curve")}
        out["curve"] = [asdict(p) for p in self.curve]
        out["tokens_per_s"] = self.tokens_per_s
        return out


@dataclass(frozen=True)
class ThroughputResult:
    """Tokens per second of the training loop (data reading included) after warm-up."""

    batch_size: int
    seq_len: int
    threads: int
    steps: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def single_stage(run: RunConfig) -> tuple[str, int, str | None]:
    """(source spec, seq_len, doc filter) of a bench run: one curriculum stage drawing on one source."""
    stages = run.curriculum.stages
    if len(stages) != 1:
        raise BenchConfigError(f"run {run.run.name!r} has {len(stages)} curriculum stages; a bench run needs "
                               "exactly one (one sequence length), see runs/bench-quick.toml")
    stage = stages[0]
    used = [name for name, weight in stage.mixture.items() if weight > 0]
    if len(used) != 1:
        raise BenchConfigError(f"stage {stage.name!r} mixes sources {used}; a bench run reads exactly one")
    return run.data.sources[used[0]], stage.seq_len, stage.filter


def with_data(run: RunConfig, spec: str) -> RunConfig:
    """The run with every source replaced by ``spec``."""
    return replace(run, data=replace(run.data, sources=dict.fromkeys(run.data.sources, spec)))


def build_model(run: RunConfig, tokenizer: LilaTokenizer) -> LilaLM:
    """The run's model with the seeded θ_0 every peer starts from (peer/node.py does the same)."""
    overrides: dict[str, object] = {"variant": run.model.variant}
    if run.model.lambda_geo is not None:
        overrides["lambda_geo"] = run.model.lambda_geo
    config = get_preset(run.model.preset, vocab_size=tokenizer.vocab_size, **overrides)
    torch.manual_seed(run.run.seed)
    return LilaLM(config)


def build_trainer(run: RunConfig, model: LilaLM, *, batch_size: int, seq_len: int) -> InnerTrainer:
    """An InnerTrainer with the micro-batch and precision the peer's memory plan would choose."""
    hardware = detect_hardware("cpu")
    plan = make_plan(run.model.preset, hardware, batch_size=batch_size, seq_len=seq_len, variant=run.model.variant)
    if not plan.fits:
        raise BenchConfigError(plan.message)
    return InnerTrainer(model, device="cpu", lr=run.curriculum.schedule.peak_lr, weight_decay=run.diloco.weight_decay,
                        grad_clip=run.diloco.grad_clip, micro_batch=plan.micro_batch, dtype=plan.dtype)


def iter_batches(run: RunConfig, tokenizer: LilaTokenizer, *, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches (inputs, targets: LongTensor[batch_size, seq_len]) from the shards in plan order.

    Only full batches are yielded; the stream ends when the source's training split is used up.
    """
    spec, seq_len, doc_filter = single_stage(run)
    rows_in: list[torch.Tensor] = []
    rows_out: list[torch.Tensor] = []
    for shard in plan_shards(spec, docs_per_shard=run.data.docs_per_shard):
        reader = ShardReader(shard, tokenizer=tokenizer, seq_len=seq_len, doc_filter=doc_filter,
                             validation_fraction=run.data.validation_fraction)
        for seq in reader:
            rows_in.append(seq.input_ids)
            rows_out.append(seq.targets)
            if len(rows_in) == batch_size:
                yield torch.stack(rows_in), torch.stack(rows_out)  # [B, T] each
                rows_in, rows_out = [], []


def validation_texts(run: RunConfig) -> list[str]:
    """The held-out texts every peer of the run evaluates on (same split, same cap)."""
    spec, _, _ = single_stage(run)
    return list(iter_validation_texts(spec, fraction=run.data.validation_fraction,
                                      max_docs=run.data.validation_max_docs))


def evaluate(model: LilaLM, tokenizer: LilaTokenizer, texts: list[str], *, seq_len: int) -> float:
    """Validation bits per byte, exactly as a peer computes it."""
    return evaluate_bpb(model, tokenizer, texts, seq_len=seq_len, batch_size=EVAL_BATCH, device="cpu").bpb


def train_plain(run: RunConfig, *, batch_size: int, token_budget: int, eval_every_tokens: int,
                threads: int, capture_delta: tuple[int, int] | None = None,
                val_texts: list[str] | None = None) -> BaselineResult:
    """Train the run's model alone with ``batch_size`` sequences per step until ``token_budget`` tokens.

    The learning rate follows the run's schedule at the tokens trained so far (as the network's does at
    its global token count). Evaluates at 0 tokens, every ``eval_every_tokens`` and at the end.
    ``capture_delta=(step, H)`` keeps θ(step) − θ(step + H), the pseudo-gradient one DiLoCo worker with
    this batch would send, for codec-error measurements. ``val_texts`` defaults to the run's held-out
    texts (what every peer evaluates on). Raises BenchConfigError when the data runs out before the
    budget (use a larger source or a smaller budget).
    """
    if token_budget < 1 or eval_every_tokens < 1 or threads < 1:
        raise ValueError("token_budget, eval_every_tokens and threads must all be >= 1")
    torch.set_num_threads(threads)
    _, seq_len, _ = single_stage(run)
    tokenizer = load_tokenizer(run.data.tokenizer)
    model = build_model(run, tokenizer)
    trainer = build_trainer(run, model, batch_size=batch_size, seq_len=seq_len)
    texts = validation_texts(run) if val_texts is None else val_texts
    result = BaselineResult(batch_size=batch_size, seq_len=seq_len, threads=threads, steps=0, tokens=0,
                            train_seconds=0.0, final_bpb=float("nan"))
    result.curve.append(CurvePoint(0, evaluate(model, tokenizer, texts, seq_len=seq_len)))
    next_eval = eval_every_tokens
    snapshot: torch.Tensor | None = None
    batches = iter_batches(run, tokenizer, batch_size=batch_size)
    started = time.perf_counter()
    while result.tokens < token_budget:
        if capture_delta is not None and result.steps == capture_delta[0]:
            snapshot = flatten_parameters(model)
        batch = next(batches, None)
        if batch is None:
            raise BenchConfigError(f"the training split ran out after {result.tokens} of {token_budget} tokens; "
                                   "use a larger source (--data) or a smaller budget")
        trainer.set_lr(curriculum_at(run.curriculum, result.tokens).lr)
        stats = trainer.step(*batch)
        result.steps += 1
        result.tokens += stats.tokens
        if capture_delta is not None and snapshot is not None and result.steps == sum(capture_delta):
            result.delta = snapshot - flatten_parameters(model)
        if result.tokens >= next_eval or result.tokens >= token_budget:
            result.train_seconds += time.perf_counter() - started
            bpb = evaluate(model, tokenizer, texts, seq_len=seq_len)
            result.curve.append(CurvePoint(result.tokens, bpb))
            logger.info("batch %d: %d tokens, val bpb %.4f", batch_size, result.tokens, bpb)
            while next_eval <= result.tokens:
                next_eval += eval_every_tokens
            started = time.perf_counter()
    result.train_seconds += time.perf_counter() - started
    result.final_bpb = result.curve[-1].val_bpb
    return result


def measure_throughput(run: RunConfig, *, batch_size: int, threads: int, steps: int = DEFAULT_THROUGHPUT_STEPS,
                       warmup: int = DEFAULT_THROUGHPUT_WARMUP) -> ThroughputResult:
    """Tokens/s of one peer's process setup training alone: same model, batch, threads and data reading.

    Tune ``steps`` so the timed part lasts several seconds (a handful of steps is noise); ``warmup``
    steps are excluded (first-step allocation and thread start-up).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    torch.set_num_threads(threads)
    _, seq_len, _ = single_stage(run)
    tokenizer = load_tokenizer(run.data.tokenizer)
    model = build_model(run, tokenizer)
    trainer = build_trainer(run, model, batch_size=batch_size, seq_len=seq_len)
    batches = iter_batches(run, tokenizer, batch_size=batch_size)
    trainer.set_lr(run.curriculum.schedule.peak_lr)
    tokens = 0
    started = 0.0
    for index in range(warmup + steps):
        if index == warmup:
            started = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            raise BenchConfigError("the training split ran out while measuring throughput; use fewer --steps")
        stats = trainer.step(*batch)
        if index >= warmup:
            tokens += stats.tokens
    return ThroughputResult(batch_size=batch_size, seq_len=seq_len, threads=threads, steps=steps, tokens=tokens,
                            seconds=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a bench run config (runs/bench-*.toml)")
    parser.add_argument("--data", help="source spec replacing the config's (e.g. parquet:/path/to/dir)")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: the run's diloco.batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--throughput", action="store_true", help="only measure tokens/s, no evaluation")
    parser.add_argument("--steps", type=int, default=DEFAULT_THROUGHPUT_STEPS, help="timed steps (--throughput)")
    parser.add_argument("--tokens", type=int, help="token budget (default: the curriculum's)")
    parser.add_argument("--evals", type=int, default=4, help="evaluations along the way")
    parser.add_argument("--capture-step", type=int, help="keep θ(step) − θ(step + H) (needs --delta-out)")
    parser.add_argument("--capture-h", type=int, help="H of the captured pseudo-gradient (default: the run's)")
    parser.add_argument("--delta-out", type=Path, help="torch.save the captured pseudo-gradient here")
    parser.add_argument("--out", type=Path, help="write the result as JSON")
    args = parser.parse_args(argv)
    if (args.capture_step is None) != (args.delta_out is None):
        parser.error("--capture-step and --delta-out go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = load_run_config(args.config)
    if args.data:
        run = with_data(run, args.data)
    batch = args.batch_size or run.diloco.batch_size
    if args.throughput:
        result = measure_throughput(run, batch_size=batch, threads=args.threads, steps=args.steps)
        print(f"batch {batch} × {result.seq_len}, {args.threads} thread(s): {result.tokens_per_s:,.0f} tokens/s")
        payload = result.to_json()
    else:
        budget = args.tokens or run.curriculum.total_tokens
        capture = None
        if args.capture_step is not None:
            capture = (args.capture_step, args.capture_h or run.diloco.inner_steps)
        res = train_plain(run, batch_size=batch, token_budget=budget,
                          eval_every_tokens=max(1, budget // max(1, args.evals)), threads=args.threads,
                          capture_delta=capture)
        if args.delta_out is not None:
            if res.delta is None:
                raise BenchConfigError(f"step {args.capture_step} + H is beyond the {res.steps} steps trained")
            torch.save(res.delta, args.delta_out)
        print(f"{'tokens':>10} {'val bpb':>8}")
        for point in res.curve:
            print(f"{point.tokens:>10,} {point.val_bpb:>8.4f}")
        print(f"batch {batch}: {res.tokens_per_s:,.0f} tokens/s over {res.steps} steps")
        payload = res.to_json()
    if args.out:
        args.out.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

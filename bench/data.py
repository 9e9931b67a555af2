# SPDX-License-Identifier: AGPL-3.0-or-later
"""Data pipeline throughput: read → tokenize → pack, against raw ``tokenizers`` batch encoding.

    python -m bench.data [--quick] [--out FILE.json] [--threads N] [--seq-len 1024]

The pipeline is what a peer runs: ``plan_shards`` on a parquet source, then a ``ShardReader`` per shard
(parquet column reads, split hashing, batched tokenization, EOS insertion, packing into LongTensor
sequences). Its tokens/s counts the tokens it delivers in sequences (``seq_len`` per sequence). The
baseline encodes the same texts, already in memory, with ``encode_batch_fast`` of the same tokenizer in
batches of ``DOCS_PER_SHARD`` texts (the batches the pipeline tokenizes); ``ratio`` = pipeline / baseline
(1.0 means the pipeline costs nothing beyond tokenizing). One call over all texts is also reported
(``raw_single_call_tokens_per_s``) for reference; it holds every encoding in memory at once.

Data: the Python documentation as parquet (``PYTHON_DOCS``); when that folder is missing the bundled
FineWeb-Edu sample is used and the JSON says so in ``note``. ``keeps_up_with_training`` compares the
pipeline with ``TRAINING_TOKENS_PER_S``, the fastest CPU training rate measured for this project.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The Python docs as parquet, in the folder beside the repository where this project keeps its larger data.
PYTHON_DOCS = REPO.parent / "shared" / "data" / "python-docs"
FALLBACK_SPEC = "bundled:fineweb-edu-sample"
QUICK_DOCS = 120
DOCS_PER_SHARD = 32
DEFAULT_SEQ_LEN = 1024
DEFAULT_THREADS = 2
DEFAULT_REPEATS = 3
QUICK_REPEATS = 1
TRAINING_TOKENS_PER_S = 10_000  # the fastest CPU training measured for this project: faster data keeps up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_DOCS} documents, one repeat")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="tokenizer (rayon) threads")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    parser.add_argument("--tokenizer", default="fineweb-edu-8192")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs; the best is reported")
    args = parser.parse_args(argv)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the tokenizer's thread pool starts

    import torch

    from lila_data import ShardReader, load_tokenizer, open_source, plan_shards

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    note = ""
    if PYTHON_DOCS.is_dir():
        spec = f"parquet:{PYTHON_DOCS}"
    else:
        spec, note = FALLBACK_SPEC, f"{PYTHON_DOCS} is missing: measured on the bundled FineWeb-Edu sample"
    tokenizer = load_tokenizer(args.tokenizer)
    source = open_source(spec)
    shards = plan_shards(spec, docs_per_shard=DOCS_PER_SHARD)
    if args.quick:
        shards = [s for s in shards if s.row_start < QUICK_DOCS and s.file == shards[0].file]
    texts = [
        t
        for s in shards
        for table in source.read(s.file, row_start=s.row_start, row_stop=s.row_stop)
        for t in table.column("text").to_pylist()
        if t
    ]
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)

    def pipeline() -> int:
        delivered = 0
        for shard in shards:
            reader = ShardReader(shard, tokenizer=tokenizer, seq_len=args.seq_len, split="all", source=source)
            for sequence in reader:
                delivered += sequence.input_ids.numel()
        return delivered

    encode = getattr(tokenizer.backend, "encode_batch_fast", tokenizer.backend.encode_batch)

    def raw() -> int:
        chunks = range(0, len(texts), DOCS_PER_SHARD)
        return sum(len(e.ids) for i in chunks for e in encode(texts[i : i + DOCS_PER_SHARD]))

    def raw_single_call() -> int:
        return sum(len(e.ids) for e in encode(texts))

    timings: dict[str, list[tuple[float, int]]] = {"pipeline": [], "raw": [], "single": []}
    for _ in range(repeats):  # interleaved, so a busy machine slows every path alike
        for key, fn in (("pipeline", pipeline), ("raw", raw), ("single", raw_single_call)):
            start = time.perf_counter()
            count = fn()
            timings[key].append((time.perf_counter() - start, count))
    (pipe_s, pipe_tokens), (raw_s, raw_tokens), (single_s, single_tokens) = (
        min(timings[key]) for key in ("pipeline", "raw", "single")
    )
    result = {
        "pipeline_tokens_per_s": pipe_tokens / pipe_s,
        "raw_tokenizer_tokens_per_s": raw_tokens / raw_s,
        "ratio": (pipe_tokens / pipe_s) / (raw_tokens / raw_s),
        "raw_single_call_tokens_per_s": single_tokens / single_s,
        "source": spec,
        "docs": len(texts),
        "text_bytes": text_bytes,
        "pipeline_tokens": pipe_tokens,
        "raw_tokens": raw_tokens,
        "pipeline_s": pipe_s,
        "raw_s": raw_s,
        "seq_len": args.seq_len,
        "tokenizer": tokenizer.name,
        "threads": args.threads,
        "repeats": repeats,
        "quick": args.quick,
        "keeps_up_with_training": pipe_tokens / pipe_s > TRAINING_TOKENS_PER_S,
        "note": note,
    }
    print(
        f"source {spec}: {len(texts)} docs, {text_bytes / 1e6:.2f} MB, {args.threads} threads, best of {repeats}"
    )
    print(f"{'path':<28}{'tokens':>12}{'seconds':>10}{'tokens/s':>14}")
    print(
        f"{'read→tokenize→pack':<28}{pipe_tokens:>12}{pipe_s:>10.3f}{result['pipeline_tokens_per_s']:>14,.0f}"
    )
    print(
        f"{'raw encode_batch':<28}{raw_tokens:>12}{raw_s:>10.3f}{result['raw_tokenizer_tokens_per_s']:>14,.0f}"
    )
    print(
        f"{'raw, one call for all texts':<28}{single_tokens:>12}{single_s:>10.3f}{single_tokens / single_s:>14,.0f}"
    )
    print(f"ratio {result['ratio']:.3f}" + (f"   note: {note}" if note else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

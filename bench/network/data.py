# SPDX-License-Identifier: AGPL-3.0-or-later
"""The bench's training data: the Python docs when they are there, with their rows shuffled once."""

from __future__ import annotations

from pathlib import Path

from bench.network.layout import REPO

# The Python docs as parquet, in the folder beside the repository where this project keeps its larger data.
PYTHON_DOCS = REPO.parent / "shared" / "data" / "python-docs"
FALLBACK_DATA = "bundled:fineweb-edu-sample"
SHUFFLED_ROW_GROUP = 64  # rows per parquet row group of the shuffled copy (a shard reads whole groups)
# Row order of the shuffled Python docs: with it the first 8 held-out files (validation_max_docs of both
# bench configs) are ~35 K tokens of library, howto and c-api pages, cheap enough to evaluate at every outer
# step. Other seeds put a 50–65 K-token changelog first.
DATA_SEED = 10


def default_data() -> str:
    """The Python docs beside the repository when they are there, else the bundled sample."""
    return f"parquet:{PYTHON_DOCS}" if PYTHON_DOCS.is_dir() else FALLBACK_DATA


def shuffled_source(spec: str, workdir: Path, *, seed: int) -> str:
    """A ``parquet:`` source with its rows shuffled once (fixed ``seed``) into ``workdir``; other specs as is.

    The Python docs are sorted by file path, so shards in plan order are topic-sorted (c-api, then
    howto, library, ..., whatsnew) and a validation cap keeps only the first held-out files (all c-api):
    the validation bpb of every run then jumps with the topic being trained. Shuffling the rows keeps the
    same documents and ids (so the same held-out split) but makes shards and the capped validation set
    a mix of topics. Documents keep their ids, so ``is_validation`` selects the same held-out files.
    """
    if not spec.startswith("parquet:"):
        return spec
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(spec.split(":", 1)[1])
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    table = pa.concat_tables([pq.read_table(f) for f in files])
    order = np.random.default_rng(seed).permutation(table.num_rows)
    out = workdir / "data" / f"{path.stem}-shuffled-{seed}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(pa.array(order)), out, row_group_size=SHUFFLED_ROW_GROUP)
    return f"parquet:{out}"

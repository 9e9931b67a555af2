# SPDX-License-Identifier: AGPL-3.0-or-later
"""The codec truth table on pseudo-gradients recorded from real networks.

    lila-peer join ... --record-pseudo-gradients 5        # the peers of a run record every 5th round
    python -m bench.codec_truth WORKDIR/peer-0/pseudo-gradients [more dirs or .pt files] --out truth.json

Every codec family — dense ``int``, ``e8``, ``leech`` and the sparse ``sparse-int`` (SparseLoCo-style
uniform values) and ``sparse-e8`` at ``--density`` — with and without the Hadamard rotation, at 1, 2 and
4 bits per coordinate (dense) or per kept value (sparse), on every recorded vector (``peer.recording``:
what a peer really sent, error-feedback residual included, with its round and H). Per row: relative
error ‖decode − x‖/‖x‖, cosine, payload bytes, bits per coordinate and the reduction against fp32. Dense
lattice codecs have no 1-bit rate (E8 and Leech start at 2) and are left out there, not faked.

What it does not say: which codec trains best per byte. Relative error is not bpb; error feedback sends
what a round dropped in later rounds, so a sparse codec's large per-round error is expected.
``python -m bench.network`` measures val bpb against bytes per round for the shipped configurations.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lila_codec import get_codec

logger = logging.getLogger("bench.codec_truth")

BITS = (1, 2, 4)
FAMILIES = ("int", "e8", "leech", "sparse-int", "sparse-e8")
DENSE_BLOCK = {"int": 64, "e8": 64, "leech": 96}  # coordinates per scale (Leech needs a multiple of 24)
SPARSE_ROTATION = 64  # Hadamard block of the rotated sparse rows
FP32_BITS = 32


def codec_options(family: str, bits: int, rotated: bool, density: float) -> dict[str, Any] | None:
    """``get_codec`` options of one table cell, or None when the family has no such rate."""
    if family.startswith("sparse-"):
        return {"density": density, "bits": bits, "rotation": SPARSE_ROTATION if rotated else 0}
    if bits < 2:  # dense block codecs start at 2 bits per coordinate
        return None
    return {"bits": bits, "block": DENSE_BLOCK[family], "rotation": None if rotated else 0}


def measure(vector: torch.Tensor, family: str, options: dict[str, Any]) -> dict[str, Any]:
    """Error, cosine and size of one codec on one vector ([numel] fp32)."""
    codec = get_codec(family, **options)
    started = time.perf_counter()
    payload = codec.encode(vector)
    encode_s = time.perf_counter() - started
    decoded = codec.decode(payload).reshape(-1)  # [numel]
    wide, reference = decoded.double(), vector.double()
    norm = float(reference.norm())
    error = float((wide - reference).norm()) / norm if norm > 0 else math.nan
    cosine = float(wide @ reference / (wide.norm() * reference.norm())) if float(wide.norm()) > 0 else 0.0
    return {"relative_error": error, "cosine": cosine, "bytes": len(payload),
            "bits_per_coord": len(payload) * 8 / vector.numel(),
            "reduction_vs_fp32": FP32_BITS * vector.numel() / (8 * len(payload)), "encode_s": encode_s}


def load_recordings(paths: list[Path]) -> list[dict[str, Any]]:
    """The recorded vectors of ``paths`` (``.pt`` files, or folders holding them), in name order."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("round-*.pt")) if path.is_dir() else [path])
    if not files:
        raise SystemExit(f"no recordings (round-*.pt) in {', '.join(map(str, paths))}: run the peers with "
                         "--record-pseudo-gradients N first")
    recordings = []
    for file in files:
        record = torch.load(file, map_location="cpu", weights_only=True)
        vector = record["vector"].reshape(-1).to(torch.float32)
        recordings.append({"file": str(file), "round": int(record["round"]),
                           "inner_steps": int(record["inner_steps"]), "preset": record["preset"],
                           "variant": record["variant"], "numel": vector.numel(), "vector": vector})
    return recordings


def truth_table(recordings: list[dict[str, Any]], *, families: tuple[str, ...] = FAMILIES,
                bits: tuple[int, ...] = BITS, density: float = 0.01) -> list[dict[str, Any]]:
    rows = []
    for record in recordings:
        for family in families:
            for rotated in (False, True):
                for rate in bits:
                    options = codec_options(family, rate, rotated, density)
                    if options is None:
                        continue
                    row = {"file": record["file"], "round": record["round"], "inner_steps": record["inner_steps"],
                           "codec": family, "bits": rate, "rotated": rotated,
                           "density": density if family.startswith("sparse-") else 1.0}
                    row.update(measure(record["vector"], family, options))
                    rows.append(row)
                    logger.info("round %d H=%d %s %d-bit%s: rel err %.4f, %.3f bits/coord", record["round"],
                                record["inner_steps"], family, rate, " rotated" if rotated else "",
                                row["relative_error"], row["bits_per_coord"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codec_truth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="recordings: folders of round-*.pt or files")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--density", type=float, default=0.01, help="kept share of the sparse codecs")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    recordings = load_recordings(args.paths)
    rows = truth_table(recordings, families=tuple(args.families), density=args.density)
    print(f"\n{'round':>5} {'H':>4} {'codec':<10} {'bits':>4} {'rot':>3} {'bits/coord':>10} {'vs fp32':>8} "
          f"{'rel err':>8} {'cosine':>7}")
    for row in rows:
        print(f"{row['round']:>5} {row['inner_steps']:>4} {row['codec']:<10} {row['bits']:>4} "
              f"{'yes' if row['rotated'] else 'no':>3} {row['bits_per_coord']:>10.3f} "
              f"{row['reduction_vs_fp32']:>8.1f} {row['relative_error']:>8.4f} {row['cosine']:>7.4f}")
    if args.out:
        meta = [{k: v for k, v in r.items() if k != "vector"} for r in recordings]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"recordings": meta, "rows": rows, "density": args.density}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed on this machine: seconds per epoch on the full FER2013 Training split, with and without
bf16 autocast + channels-last, and the wall time of the quick `--limit 2000` one-epoch run.

    .venv/bin/python benchmarks/bench_train.py [--data ../shared/data/fer2013/fer2013.csv.gz]
        [--arch fastres_s] [--variants fp32,bf16-cl] [--batch-size N] [--limit N] [--repeat N] [--skip-quick]

Each variant runs ``ferkit.train.train`` for one epoch (the real loop: augmentation, optimiser, validation
on PublicTest) and reads ``epoch_time_s`` and the training throughput ``images_per_s`` from metrics.json;
ratios are against the first variant measured in the same run. With ``--limit N`` (rows per split) the
full-epoch time is extrapolated from the throughput; ``--repeat`` alternates the variants. The load
average is printed: other processes on the 2 cores distort the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data")) / "fer2013" / "fer2013.csv.gz"
TRAINING_ROWS = 28709  # FER2013 Training split
VARIANTS = {
    "fp32": dict(precision="fp32", channels_last=False),
    "fp32-cl": dict(precision="fp32", channels_last=True),
    "bf16": dict(precision="bf16", channels_last=False),
    "bf16-cl": dict(precision="bf16", channels_last=True),
}


def one_epoch(data: str, arch: str, variant: str, limit: int | None, batch_size: int | None) -> dict:
    from ferkit.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(TrainConfig(data=data, arch=arch, out=tmp, epochs=1, limit=limit, progress=False, seed=0, batch_size=batch_size,
                          augment="standard", **VARIANTS[variant]))
        wall = time.perf_counter() - t0
        rec = json.loads((Path(tmp) / "metrics.json").read_text())["history"][0]
    return {"epoch_s": rec["epoch_time_s"], "img_s": rec["images_per_s"], "wall_s": wall}


def quick_run_wall(data: str, arch: str) -> float:
    """Wall time of the CLI one-epoch run on 2,000 rows per split, process start included."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ferkit.cli", "train", "--data", data, "--arch", arch, "--epochs", "1",
               "--limit", "2000", "--out", tmp, "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--arch", default="fastres_s")
    ap.add_argument("--variants", default="fp32,bf16-cl")
    ap.add_argument("--limit", type=int, default=None, help="rows per split (default: the full Training split)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the architecture's recipe")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the variants this many times")
    ap.add_argument("--skip-quick", action="store_true", help="skip the --limit 2000 CLI wall-time row")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"data not found: {args.data}")
    import torch

    from ferkit.data import load_fer2013

    load_fer2013(args.data)  # parse once so no row below pays for it
    print(f"# {args.arch}, batch {args.batch_size or 'default'}, one epoch on {'the full Training split' if not args.limit else f'{args.limit} rows'} "
          f"+ PublicTest validation; torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    results: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    for _ in range(args.repeat):  # variants alternate, so a change in machine load hits all of them alike
        for v in results:
            r = one_epoch(args.data, args.arch, v, args.limit, args.batch_size)
            results[v].append(r)
            print(f"  measured {v}: {r}", flush=True)
    first = next(iter(results))
    med = {v: statistics.median(r["img_s"] for r in rs) for v, rs in results.items()}
    print(f"\n| variant | s/epoch measured | training images/s (median of {args.repeat}) | s per full Training epoch "
          f"({TRAINING_ROWS} images) | speed-up vs {first} |")
    print("|---|---:|---:|---:|---:|")
    for v, rs in results.items():
        measured = ", ".join(f"{r['epoch_s']:.1f}" for r in rs)
        print(f"| {v} | {measured} | {med[v]:.0f} | {TRAINING_ROWS / med[v]:.0f} | {med[v] / med[first]:.2f}x |")
    if not args.skip_quick:
        wall = quick_run_wall(args.data, args.arch)
        print(f"\n`ferkit train --arch {args.arch} --epochs 1 --limit 2000` wall time (process start to exit): {wall:.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""How fast the FER2013 CSV (and optionally an image folder) loads: cold parse and from the .npz cache.

    .venv/bin/python benchmarks/bench_data.py [--data ../shared/data/fer2013/fer2013.csv.gz] [--folder DIR]

Baseline, measured in the same run: the usual per-row Python parse (``csv`` module, then
``np.array(pixels.split(), uint8)`` per row), which is what the source projects did. Prints one table
with seconds and the ratio to the baseline; the machine's load average is printed too, because on a
shared 2-core machine other jobs change the absolute numbers.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def baseline_parse(path: Path) -> int:
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    images, labels = [], []
    for row in csv.DictReader(io.StringIO(text)):
        images.append(np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48))
        labels.append(int(row["emotion"]))
    return len(np.stack(images))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"))
    ap.add_argument("--folder", default=None, help="also time an image-folder tree (cold and cached)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the slow per-row baseline")
    args = ap.parse_args()

    from ferkit.data import load_fer2013
    from ferkit.data.folders import load_image_folder

    path = Path(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        if not args.no_baseline:
            t, n = timed(lambda: baseline_parse(path))
            rows.append(("csv module + per-row numpy (baseline)", t, n))
        t, ds = timed(lambda: load_fer2013(path, cache_dir=cache))
        rows.append(("load_fer2013, cold (parse + write cache)", t, len(ds)))
        t, ds = timed(lambda: load_fer2013(path, cache_dir=cache))
        rows.append(("load_fer2013, from cache", t, len(ds)))
        if args.folder:
            t, fd = timed(lambda: load_image_folder(args.folder, cache_dir=cache))
            rows.append((f"load_image_folder {Path(args.folder).name}, cold", t, len(fd)))
            t, fd = timed(lambda: load_image_folder(args.folder, cache_dir=cache))
            rows.append((f"load_image_folder {Path(args.folder).name}, cached", t, len(fd)))
    base = rows[0][1] if not args.no_baseline else None
    print(f"data: {path} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'method':<46}{'images':>8}{'seconds':>10}{'vs baseline':>13}")
    for name, t, n in rows:
        ratio = f"{base / t:>12.1f}x" if base else f"{'-':>13}"
        print(f"{name:<46}{n:>8,}{t:>10.2f}{ratio}")


if __name__ == "__main__":
    main()

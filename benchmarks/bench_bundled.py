"""Speed of every bundled model, side by side with the default measured in the same run.

    python benchmarks/bench_bundled.py [--batch 64] [--rounds 5] [--threads 2] [--extra a.onnx,b.onnx]

For each model in ``src/ferkit/assets`` (``ferkit models --bundled``): faces/s through
``EmotionClassifier.predict_proba`` on random 48x48 faces at the given batch size, with the model's
default test-time augmentation (what ``ferkit.analyze`` does with it), best of ``--rounds`` rounds of
about one second each, and the ratio to ``default``. Rounds alternate between the models, so a busy
machine slows all of them alike; the absolute numbers are lower on a shared machine, the ratios hold.
``--extra`` adds exported models (candidates for a bundled slot) to the same rounds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

from ferkit.commands.models import describe_bundled  # noqa: E402
from ferkit.runtime import EmotionClassifier, bundled_models  # noqa: E402


def faces_per_s(clf: EmotionClassifier, faces: np.ndarray, seconds: float = 1.0) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        clf.predict_proba(faces)
        n += len(faces)
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: ferkit's choice)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    ap.add_argument("--extra", default="", help="comma-separated .onnx files measured in the same rounds")
    args = ap.parse_args(argv)
    names = bundled_models()
    if "default" not in names:
        raise SystemExit("bench_bundled: no bundled default model in this installation")
    extra = [x.strip() for x in args.extra.split(",") if x.strip()]
    clfs = {n: EmotionClassifier(n, threads=args.threads) for n in names + extra}
    faces = np.random.default_rng(0).integers(0, 256, (args.batch, 48, 48), dtype=np.uint8)
    best = {n: 0.0 for n in clfs}
    for c in clfs.values():
        c.predict_proba(faces)  # warm-up
    for _ in range(args.rounds):
        for n, c in clfs.items():
            best[n] = max(best[n], faces_per_s(c, faces, args.seconds))
    described = {r["name"]: r for r in describe_bundled()}  # what `ferkit models --bundled` shows
    rows = [[n, described[n]["arch"] if n in described else str(c.metadata.get("arch")), c.tta, f"{best[n]:,.0f}",
             f"{best[n] / best['default']:.2f}x"] for n, c in clfs.items()]
    print_table(f"Bundled models, batch {args.batch}, best of {args.rounds} rounds (faces/s, default TTA)",
                ["model", "architecture", "TTA", "faces/s", "vs default"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

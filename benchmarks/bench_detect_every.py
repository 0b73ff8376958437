"""What ``--detect-every K`` buys and costs on video, one run, against K = 1 (detection on every frame).

    python benchmarks/bench_detect_every.py [--clips 20] [--frames 30] [--speeds 0,2,6] [--every 1,2,3,5]

Clips are made here (written as mp4 and read back, like a user's video): each is a faces-dev photo (a real face with its label) scaled to a 180-pixel face and
moved across a gray 640x480 canvas at a constant speed (pixels per frame; 0 = still), 30 frames. For each K it
runs :func:`ferkit.video.iter_video` (YuNet, the bundled default model, smoothing off) and reports:

- ms per frame (median over clips; reading the mp4 included) and the speed-up against K = 1 measured in the same run;
- agreement: the share of frames whose emotion equals the K = 1 answer for the same frame;
- box IoU: mean overlap of each frame's box with the K = 1 box (how far a reused box lags a moving face);
- accuracy against the photo's label (faces-dev's, crowd-sourced) over all frames, K = 1 as the baseline.

A moving face is where a reused box can miss: at 6 px/frame (a face crossing a 640-pixel frame in 3.5 s at
30 fps) a box 4 frames old is 24 px behind a 180-px face. Needs faces-dev (skipped cleanly without it).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

import cv2  # noqa: E402

from ferkit.faces import iou  # noqa: E402

DATA = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data"))


def make_clip(face: np.ndarray, speed: float, frames: int, size=(640, 480), face_px: int = 180) -> list[np.ndarray]:
    """Frames of ``face`` (scaled to ``face_px``) gliding right at ``speed`` px/frame over a gray canvas."""
    w, h = size
    f = cv2.resize(face, (face_px, face_px), interpolation=cv2.INTER_AREA)
    x0 = 40 if speed else (w - face_px) // 2
    y = (h - face_px) // 2
    out = []
    for i in range(frames):
        canvas = np.full((h, w, 3), 110, np.uint8)
        x = int(round(x0 + speed * i))
        x = min(max(0, x), w - face_px)
        canvas[y:y + face_px, x:x + face_px] = f
        out.append(canvas)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=20, help="faces-dev photos used (one clip each per speed)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--speeds", default="0,2,6", help="pixels per frame")
    ap.add_argument("--every", default="1,2,3,5", help="values of K (1 is the baseline and always run)")
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    root = DATA / "faces-dev"
    if not (root / "labels.csv").is_file():
        print(f"faces-dev not found at {root}; skipped")
        return 0
    from ferkit.io import read_image
    from ferkit.pipeline import Analyzer
    from ferkit.video import iter_video

    rows = list(csv.DictReader(open(root / "labels.csv", newline="")))
    rng = np.random.default_rng(0)
    pick = [rows[i] for i in rng.choice(len(rows), size=min(args.clips, len(rows)), replace=False)]
    analyzer = Analyzer(args.model, detector="yunet")
    speeds = [float(v) for v in args.speeds.split(",")]
    every = sorted({1, *(int(v) for v in args.every.split(","))})
    print(f"{len(pick)} faces-dev photos x speeds {speeds} x K {every}, {args.frames} frames of 640x480 each; "
          f"machine: {os.cpu_count()} CPUs")

    tmp = tempfile.TemporaryDirectory()

    def write_clip(frames) -> str:  # an mp4 like a user's video: decoding is part of every K's time
        path = os.path.join(tmp.name, "clip.mp4")
        vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (frames[0].shape[1], frames[0].shape[0]))
        for fr in frames:
            vw.write(fr)
        vw.release()
        return path

    out = []
    for speed in speeds:
        res = {k: {"ms": [], "agree": [], "iou": [], "correct": [], "found": []} for k in every}
        for r in pick:
            face = read_image(root / r["file"])
            clip = write_clip(make_clip(face, speed, args.frames))
            base = None
            for k in every:
                t0 = time.perf_counter()
                got = list(iter_video(clip, analyzer, smoothing=0, detect_every=k))
                res[k]["ms"].append((time.perf_counter() - t0) / max(1, len(got)) * 1e3)
                per = [(fr.raw[0].emotion, fr.raw[0].box) if fr.raw else (None, None) for fr in got]
                if k == 1:
                    base = per
                res[k]["found"] += [e is not None for e, _ in per]
                res[k]["correct"] += [e == r["label"] for e, _ in per]
                for (e, b), (e1, b1) in zip(per, base):
                    if e1 is None:
                        continue
                    res[k]["agree"].append(e == e1)
                    res[k]["iou"].append(iou(b, b1) if b is not None else 0.0)
        ms1 = float(np.median(res[1]["ms"]))
        for k in every:
            ms = float(np.median(res[k]["ms"]))
            out.append((f"{speed:g}", k, ms, f"{ms1 / ms:.2f}x", float(np.mean(res[k]["found"])),
                        float(np.mean(res[k]["agree"])), float(np.mean(res[k]["iou"])),
                        float(np.mean(res[k]["correct"]))))
    print_table("detect every K frames (K = 1: the baseline, detection on every frame)",
                ["px/frame", "K", "ms / frame", "speed vs K=1", "frames with a face", "same emotion as K=1",
                 "box IoU vs K=1", "accuracy (faces-dev label)"], out,
                fmt=lambda v: f"{v:.3f}" if isinstance(v, float) and v < 1.5 else (f"{v:.1f}" if isinstance(v, float) else str(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

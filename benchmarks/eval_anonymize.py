"""How many faces ``ferkit anonymize`` finds (and so hides) on faces-dev, by detection threshold and border
passes, on the photos as they are and on harder variants of them.

faces-dev (``../shared/data/faces-dev``): 1,094 real photos, one face each, so "a face was found" is the
detector's hit rate and a photo with more than one detection has a false positive (for anonymising, a false
positive only hides a patch of background; a miss leaks a face). Variants, made from each photo:

- ``photo``:   as it is (mostly 350x350 LFW face crops, the face fills much of the photo);
- ``small``:   shrunk to 40 px wide and pasted on a 480x360 grey canvas (a face far from the camera);
- ``dark``:    brightness x 0.3 plus Gaussian noise (sigma 6 grey levels): a dim, noisy room;
- ``rotated``: turned 35 degrees (a tilted head), on a grey background.

Each configuration's detection passes (:meth:`Anonymizer.detection_passes`: one per border, plus the
enlarged pass with ``--upscale``) run once at threshold 0; the detections are then filtered per threshold
and merged as ``Anonymizer.detect`` merges them (YuNet's filtering is by score only, so this equals a run
at each threshold). Haar's threshold changes its
grouping, so Haar is run once per threshold (slow: ~100 ms per photo). Prints Markdown tables.

    python benchmarks/eval_anonymize.py                       # yunet, all photos, all variants (several minutes)
    python benchmarks/eval_anonymize.py --limit 200           # every k-th photo, 200 in all
    python benchmarks/eval_anonymize.py --haar --limit 200    # Haar too
    python benchmarks/eval_anonymize.py --limit 200 --configs upscale --variants photo,small
    python benchmarks/eval_anonymize.py --limit 200 --configs "" --margins   # Haar margins that cover YuNet's region

``--margins``: on photos where both detectors find a face, how far Haar's box must be widened (fractions of
its width/height, per side) to cover YuNet's box widened by YuNet's anonymize margins; prints the median
and the 90th percentile (the source of ``ANONYMIZE_MARGINS["haar"]``).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

from ferkit.faces import iou  # noqa: E402
from ferkit.io import read_image  # noqa: E402
from ferkit.privacy.anonymize import ANONYMIZE_CONFIDENCE, ANONYMIZE_PADS, Anonymizer, expand_box  # noqa: E402

VARIANTS = ("photo", "small", "dark", "rotated")


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data")) / "faces-dev"


def variant(img: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "photo":
        return img
    if name == "small":
        h, w = img.shape[:2]
        s = 40 / w
        face = cv2.resize(img, (40, max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        canvas = np.full((360, 480, 3), 128, np.uint8)
        fh = min(face.shape[0], 210)
        canvas[150:150 + fh, 220:260] = face[:fh]
        return canvas
    if name == "dark":
        f = img.astype(np.float32) * 0.3 + rng.normal(0, 6, img.shape)
        return np.clip(f, 0, 255).astype(np.uint8)
    if name == "rotated":
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 35, 1.0)
        return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    raise ValueError(name)


def union(passes, threshold: float) -> int:
    """Faces found by any pass at ``threshold`` (boxes overlapping by IoU >= 0.3 count once)."""
    found = []
    for dets in passes:
        for d in dets:
            if d.score >= threshold and not any(iou(d.box, f.box) >= 0.3 for f in found):
                found.append(d)
    return len(found)


def table(headers, rows, title):
    print_table(title, headers, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="faces-dev folder (default: ../shared/data/faces-dev)")
    ap.add_argument("--limit", type=int, default=None, help="use N photos, evenly spaced over labels.csv")
    ap.add_argument("--thresholds", default="0.5,0.4,0.3", help="detection thresholds (first = the baseline)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--configs", default="pipeline,default",
                    help="yunet configurations: pipeline (no border), default (anonymize's), upscale (+ a 2x pass)")
    ap.add_argument("--haar", action="store_true", help="also the Haar cascade (slow)")
    ap.add_argument("--margins", action="store_true", help="the Haar margins that cover YuNet's region (slow)")
    args = ap.parse_args()

    root = data_dir(args.data)
    rows = list(csv.DictReader(open(root / "labels.csv", newline="")))
    if args.limit and args.limit < len(rows):
        idx = np.linspace(0, len(rows) - 1, args.limit).round().astype(int)
        rows = [rows[i] for i in idx]
    thresholds = [float(v) for v in args.thresholds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    photos = [read_image(root / r["file"]) for r in rows]
    print(f"faces-dev: {len(photos)} photos from {root}; load average {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} CPUs); anonymize defaults: confidence {ANONYMIZE_CONFIDENCE}, passes {ANONYMIZE_PADS}")

    known = {
        "pipeline": ("yunet, no border (the emotion pipeline's)", Anonymizer(detector="yunet", confidence=0.0, pad=0.0)),
        "default": ("yunet, borders 0 + 0.25 (anonymize default)", Anonymizer(detector="yunet", confidence=0.0)),
        "upscale": ("yunet, borders 0 + 0.25 + 2x pass (--upscale 2)",
                    Anonymizer(detector="yunet", confidence=0.0, upscale=2.0)),
    }
    configs = [known[c] for c in args.configs.split(",") if c]
    out_rows = []
    for vname in variants:
        rng = np.random.default_rng(0)
        images = [variant(p, vname, rng) for p in photos]
        for cname, anon in configs:
            t0 = time.perf_counter()
            per_image = [list(anon.detection_passes(img)) for img in images]
            ms = (time.perf_counter() - t0) / len(images) * 1e3
            for c in thresholds:
                counts = np.array([union(passes, c) for passes in per_image])
                out_rows.append((vname, cname, f"{c:g}", f"{(counts > 0).sum()} ({(counts > 0).mean():.1%})",
                                 f"{(counts > 1).mean():.1%}", f"{ms:.0f}"))
        if args.haar:
            for c in (0.5, ANONYMIZE_CONFIDENCE["haar"]):
                haar = Anonymizer(detector="haar", confidence=c)
                t0 = time.perf_counter()
                counts = np.array([len(haar.detect(img)) for img in images])
                ms = (time.perf_counter() - t0) / len(images) * 1e3
                out_rows.append((vname, "haar, border 0.25", f"{c:g}", f"{(counts > 0).sum()} ({(counts > 0).mean():.1%})",
                                 f"{(counts > 1).mean():.1%}", f"{ms:.0f}"))
    if out_rows:
        table(["variant", "detector, passes", "threshold", "photos with a face found", ">1 detection", "ms / photo"],
              out_rows, f"Faces found for anonymising ({len(photos)} faces-dev photos per variant)")
    if args.margins:
        margins(photos)


def margins(photos) -> None:
    yunet = Anonymizer(detector="yunet", confidence=0.5, pad=0.0)
    haar = Anonymizer(detector="haar", confidence=0.5)
    need = []
    for img in photos:
        y, h = yunet.detect(img), haar.detect(img)
        if not y or not h:
            continue
        ex, ey, ew, eh = expand_box(y[0].box, yunet.margin, yunet.margin_top)
        hx, hy, hw, hh = h[0].box
        need.append(((hx - ex) / hw, (ex + ew - hx - hw) / hw, (hy - ey) / hh, (ey + eh - hy - hh) / hh))
    need = np.asarray(need)
    rows = [(f"{q}th percentile", *(f"{v:.2f}" for v in np.percentile(need, q, axis=0))) for q in (50, 90)]
    table(["", "left", "right", "top", "bottom"], rows,
          f"Haar widening needed to cover YuNet's anonymize region ({len(need)} photos with both faces)")


if __name__ == "__main__":
    main()

"""How much FER2013's cross-split duplicates flatter the test figures, one run.

    python benchmarks/eval_leakage.py [--data fer2013.csv.gz] [--models default,fer2013,accurate]

FER2013's PublicTest and PrivateTest share some images, pixel for pixel, with Training (``ferkit data clean
--rules duplicates`` counts them). A model trained on Training has seen those test images, usually with the
same label. Everyone reports FER2013 on the full splits, and so does ferkit; this script splits each bundled
7-class model's accuracy (its default test-time augmentation, i.e. what ``ferkit evaluate`` reports) into the
test images that also occur in Training and those that do not. The baseline is the full split, as reported.
"Inflation" = full-split accuracy minus accuracy on the images not in Training.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

DATA = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data"))


def leak_masks(images: np.ndarray, labels: np.ndarray, is_train: np.ndarray):
    """For every image: whether an identical image is in Training (excluding itself), and whether one of those
    Training copies carries the same label. Returns (in_train, same_label) bool arrays."""
    from ferkit.data.clean import duplicate_groups

    groups = duplicate_groups(images)
    n = int(groups.max()) + 1 if len(groups) else 0
    own = is_train.astype(np.int64)  # an image never counts as its own copy
    in_train = np.bincount(groups[is_train], minlength=n)[groups] - own > 0
    pair = groups * (int(labels.max()) + 1 if len(labels) else 1) + labels  # (group, label)
    same = np.bincount(pair[is_train], minlength=int(pair.max()) + 1 if len(pair) else 0)[pair] - own > 0
    return in_train, same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA / "fer2013" / "fer2013.csv.gz"))
    ap.add_argument("--models", default="default,fer2013,accurate", help="bundled names or .onnx files (7 classes)")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"FER2013 not found at {args.data}; skipped")
        return 0
    from ferkit.data.fer2013 import load_fer2013
    from ferkit.labels import EMOTIONS
    from ferkit.runtime import EmotionClassifier

    ds = load_fer2013(args.data)
    is_train = np.zeros(len(ds), bool)
    is_train[ds.split("Training")] = True
    in_train, same = leak_masks(ds.images, ds.labels, is_train)
    rows = []
    for split in ("PublicTest", "PrivateTest"):
        idx = ds.split(split)
        leaked = in_train[idx]
        print(f"{split}: {len(idx)} images, {int(leaked.sum())} also in Training "
              f"({int((leaked & same[idx]).sum())} of them with the same label there)")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        clf = EmotionClassifier(name)
        if tuple(clf.labels) != EMOTIONS:
            print(f"{name}: not a 7-class FER2013 model; skipped")
            continue
        for split in ("PublicTest", "PrivateTest"):
            idx = ds.split(split)
            ok = clf.predict_proba(ds.images[idx]).argmax(1) == ds.labels[idx]
            leaked = in_train[idx]
            full, clean, seen = ok.mean(), ok[~leaked].mean(), ok[leaked].mean() if leaked.any() else float("nan")
            rows.append((name, clf.tta, split, len(idx), 100 * full, int((~leaked).sum()), 100 * clean,
                         int(leaked.sum()), 100 * seen, f"{100 * (full - clean):+.2f}"))
    print_table("Accuracy on the test images that also occur in Training, and on the rest (full split = as reported)",
                ["model", "TTA", "split", "n", "full split %", "n not in Training", "not in Training %",
                 "n in Training", "in Training %", "inflation (points)"], rows,
                fmt=lambda v: f"{v:.2f}" if isinstance(v, float) else str(v))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How truthful are the probabilities? Calibration of each model on PublicTest, faces-dev and (with
--private) PrivateTest, raw softmax (T = 1) against its temperature.

    python benchmarks/eval_calibration.py                           # the bundled models, at T = 1 and their own T
    python benchmarks/eval_calibration.py --fit                     # also T fitted on PublicTest here (not stored)
    python benchmarks/eval_calibration.py --models default,m.onnx --private

Columns: n, accuracy, log-loss (mean negative log-likelihood of the true class, nats), ECE (expected
calibration error over 15 equal-width bins of the top probability, points), Brier score, mean top
probability. The temperature never changes a prediction, so accuracy is the same in every row of a model
and set. faces-dev (1,094 real photos, ``../shared/data/faces-dev``) goes through YuNet and the model's
default crop, like ``ferkit.analyze``; photos without a face, and photos whose label the model lacks, are
left out. A FER+ model is scored on FER+ labels on the FER2013 splits (``--ferplus``) and on faces-dev's
seven labels by name (so "contempt" is always wrong there).

PrivateTest is the final test: ``--private`` belongs after a decision, never in it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402
from eval_faces_dev import Scorer, crop_probs, data_dir, load_faces_dev, run_detector  # noqa: E402

from ferkit.calibrate import fit_temperature, temperature_nll  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402
from ferkit.faces import get_detector  # noqa: E402
from ferkit.faces.align import CropSpec  # noqa: E402
from ferkit.metrics import calibration, scale_temperature  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def row_metrics(probs: np.ndarray, y: np.ndarray, t: float) -> dict:
    p = scale_temperature(probs, t)
    cal = calibration(p, y)
    return {"n": int(len(y)), "accuracy": float((p.argmax(1) == y).mean()), "nll": temperature_nll(p, y, 1.0),
            "ece": cal["ece"], "brier": cal["brier"], "confidence": cal["confidence"]}


def faces_dev_probs(clf, images, dets, y_fer7):
    """Raw (T = 1) probabilities of the found faces whose label the model has, and those labels."""
    y = Scorer(clf, y_fer7).y
    idx, probs = crop_probs(clf, images, dets, getattr(get_detector("yunet"), "default_crop", CropSpec()))
    keep = y[idx] >= 0
    return probs[keep], y[idx][keep]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated .onnx paths or bundled names (default: all bundled)")
    ap.add_argument("--data", default=str(SHARED / "fer2013" / "fer2013.csv.gz"))
    ap.add_argument("--ferplus", default=str(SHARED / "fer2013" / "fer2013new.csv"), help="for FER+ models")
    ap.add_argument("--faces-dev", default=None, help="faces-dev folder (default: ../shared/data/faces-dev)")
    ap.add_argument("--fit", action="store_true", help="add rows at a temperature fitted on PublicTest in this run")
    ap.add_argument("--private", action="store_true", help="also score PrivateTest (after decisions only)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    from ferkit.evaluate import evaluate
    from ferkit.runtime import EmotionClassifier, bundled_models

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else bundled_models()
    if not Path(args.data).is_file():
        print(f"FER2013 not found at {args.data}; nothing to evaluate (skipped)")
        return 0
    root = data_dir(args.faces_dev)
    have_dev = (root / "labels.csv").is_file()
    if have_dev:
        images, y_dev, _ = load_faces_dev(root, None)
        dets, _, _ = run_detector(images, "yunet")
    else:
        print(f"faces-dev not found at {root}; its rows are skipped")
    splits = ["PublicTest"] + (["PrivateTest"] if args.private else [])
    rows, out = [], []
    for m in models:
        try:
            clf = EmotionClassifier(m, temperature=1.0)
        except FerkitError as e:
            print(f"{m}: {e}")
            continue
        own = clf.default_temperature
        kw = {"ferplus": args.ferplus} if clf.label_set == "ferplus8" else {}
        sets = {}
        try:
            for s in splits:
                r = evaluate(clf, args.data, split=s, return_probs=True, **kw)
                sets[s] = (r["probs"], r["y_true"])
        except FerkitError as e:  # e.g. a FER+ model without fer2013new.csv
            print(f"{m}: {e}")
            continue
        if have_dev:
            sets["faces-dev"] = faces_dev_probs(clf, images, dets, y_dev)
        temps = [("raw", 1.0)] + ([("own", own)] if own != 1.0 else [])
        if args.fit:
            temps.append(("fitted on PublicTest", float(f"{fit_temperature(*sets['PublicTest']):.4g}")))
        for name, (probs, y) in sets.items():
            base = None
            for label, t in temps:
                r = row_metrics(probs, y, t)
                base = base or r
                out.append({"model": m, "set": name, "temperature": t, "which": label, **r})
                rows.append((m, name, f"{t:g} ({label})", r["n"], f"{100 * r['accuracy']:.2f}", f"{r['nll']:.4f}",
                             f"{r['nll'] - base['nll']:+.4f}", f"{100 * r['ece']:.2f}",
                             f"{100 * (r['ece'] - base['ece']):+.2f}", f"{r['brier']:.4f}",
                             f"{100 * r['confidence']:.2f}"))
    print_table("Calibration (ECE: 15 bins of the top probability; deltas against the raw softmax of the same model "
                "and set)", ["model", "set", "temperature", "n", "accuracy %", "log-loss", "d log-loss", "ECE %",
                             "d ECE", "Brier", "mean top p %"], rows)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End to end on real photos: face detection and emotion accuracy on faces-dev, and the sweeps that choose
the pipeline's defaults (detector, crop framing, alignment, preprocessing) by measurement.

faces-dev (``../shared/data/faces-dev``): 1,094 real photos with an expression label each (``labels.csv``,
column ``fer2013_label``; no fear photos). Every photo shows one face, so "a face was found" is the
detector's hit rate, and a photo with more than one detection has at least one false positive.

    python benchmarks/eval_faces_dev.py                      # detection per detector + default pipeline accuracy
    python benchmarks/eval_faces_dev.py --sweep-crop "scale=1.0,1.1,1.2,1.3;shift_y=-0.05,0,0.05"
    python benchmarks/eval_faces_dev.py --sweep-align
    python benchmarks/eval_faces_dev.py --sweep-preprocess "equalize=0,1;gamma=1,1.5;blur_sigma=0,0.6"
    python benchmarks/eval_faces_dev.py --sweep-confidence 0.3,0.5,0.7
    python benchmarks/eval_faces_dev.py --framing            # where each detector's box sits in FER2013 faces
    python benchmarks/eval_faces_dev.py --multi-crop 1.0,1.12,1.25   # mean of several crop scales vs one crop

Emotion metrics: accuracy and macro-F1 over the classes present in faces-dev (fear has no photo, so it
is left out of the macro average; a predicted "fear" still counts as an error). "all photos" counts a
photo without a detected face as wrong; "found" scores only photos with a face. The baseline row feeds
the whole photo to the classifier (faces-dev photos are roughly face crops already), no detector.
Options: --model (default: the bundled model), --tta (default: the model's own), --limit N (first N photos, for a quick look), --json FILE.

Any other labelled photos, end to end: ``--data DIR`` with ``DIR/<class>/*`` (or ``DIR/train|val|test/<class>/*``, all
taken), class folder names as ``ferkit evaluate`` reads them; photos of a class the model lacks (contempt for a
7-class model) are left out of the scores.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.faces import as_gray, detect_faces, get_detector  # noqa: E402
from ferkit.faces.align import CropSpec, crop_faces  # noqa: E402
from ferkit.io import read_image  # noqa: E402
from ferkit.labels import EMOTIONS, get_label_set  # noqa: E402
from ferkit.metrics import confusion_matrix, precision_recall_f1  # noqa: E402
from ferkit.pipeline import default_crop  # noqa: E402


def data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    base = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
    return base / "faces-dev"


def load_faces_dev(root: Path, limit: int | None):
    """(images, labels, relative paths) of faces-dev (``labels.csv``: file, fer2013_label) or of any folder of
    labelled photos in ferkit's class-folder layout (``<root>/<class>/*`` or ``<root>/train|val|test/<class>/*``,
    every split taken; see :mod:`ferkit.data.folders`). Labels are FER2013 ids, 7 for contempt."""
    if (root / "labels.csv").is_file():
        rows = [(r["file"], int(r["fer2013_label"])) for r in csv.DictReader(open(root / "labels.csv", newline=""))]
    else:
        from ferkit.data.folders import scan_image_folder

        _, items, folders, _ = scan_image_folder(root)
        print(f"class folders: {', '.join(f'{k} -> {v}' for k, v in folders.items())}")
        rows = [(rel, cid) for rel, cid, *_ in items]
    if limit:
        rows = rows[:limit]
    images, labels, names = [], [], []
    for name, label in rows:
        try:
            images.append(read_image(root / name))
        except FerkitError as e:
            print(f"skip: {e}", file=sys.stderr)
            continue
        labels.append(label)
        names.append(name)
    return images, np.asarray(labels, np.int64), names


def table(headers, rows, title=None):
    print_table(title, headers, rows, fmt=lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))


# ----------------------------------------------------------------------------------------- detection
def run_detector(images, name, **kw):
    """Largest detection per image (or None), the number of detections, and ms per image."""
    det = get_detector(name)
    t0 = time.perf_counter()
    best, counts = [], []
    for img in images:
        d = detect_faces(img, det, **kw)
        best.append(d[0] if d else None)
        counts.append(len(d))
    ms = (time.perf_counter() - t0) / max(1, len(images)) * 1e3
    return best, np.asarray(counts), ms


# ------------------------------------------------------------------------------------------ emotions
class Scorer:
    """Maps faces-dev FER2013 ids to the model's label ids and scores predictions."""

    def __init__(self, clf, y_fer7):
        self.clf = clf
        labels = list(clf.labels)
        self.labels = labels
        label_set = get_label_set(clf.label_set) if getattr(clf, "label_set", None) else None
        y_fer7 = np.asarray(y_fer7, np.int64)
        basic = y_fer7 < len(EMOTIONS)  # 7 = contempt (a class folder): only a model that has it can score it
        if tuple(labels) == EMOTIONS:
            y = np.where(basic, y_fer7, -1)
        elif label_set is not None and label_set.from_fer7 is not None:  # e.g. fer6 merges disgust into angry
            y = np.where(basic, label_set.map_fer7(np.where(basic, y_fer7, 0)), -1)
        else:  # map by name (a FER+ model: faces-dev's 7 names are among its 8; 'contempt' is always wrong)
            names = EMOTIONS + ("contempt",)
            y = np.asarray([labels.index(names[i]) if names[i] in labels else -1 for i in y_fer7], np.int64)
        self.y = y
        self.present = sorted(set(int(v) for v in y if v >= 0))

    def _metrics(self, y, p):
        c = len(self.labels)
        acc = float((y == p).mean())
        support = np.bincount(y, minlength=c).astype(float)  # a photo without a face still counts here
        tp = np.bincount(y[y == p], minlength=c).astype(float)
        pred_n = np.bincount(p[p >= 0], minlength=c).astype(float)
        prec = np.divide(tp, pred_n, out=np.zeros(c), where=pred_n > 0)
        rec = np.divide(tp, support, out=np.zeros(c), where=support > 0)
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(c), where=(prec + rec) > 0)
        return acc, float(f1[self.present].mean())

    def _keep(self, mask):
        keep = self.y >= 0
        return keep & mask if mask is not None else keep

    def score(self, pred, mask=None):
        """pred: (N,) model label ids, -1 for no face. Returns (accuracy, macro-F1 over present classes, n)."""
        keep = self._keep(mask)
        y, p = self.y[keep], pred[keep]
        if y.size == 0:
            return float("nan"), float("nan"), 0
        acc, f1 = self._metrics(y, p)
        return acc, f1, int(y.size)

    def delta(self, pred, ref, mask=None, n_boot: int = 1000, seed: int = 0) -> str:
        """Paired bootstrap over photos of (pred - ref): accuracy and macro-F1 differences with 95% CIs,
        formatted 'd_acc [lo, hi] / d_f1 [lo, hi]' in percentage points."""
        keep = self._keep(mask)
        y, p, r = self.y[keep], pred[keep], ref[keep]
        if y.size == 0:
            return "-"
        a0, f0 = self._metrics(y, p)
        a1, f1 = self._metrics(y, r)
        rng = np.random.default_rng(seed)
        da, df = [], []
        for _ in range(n_boot):
            i = rng.integers(0, y.size, y.size)
            pa, pf = self._metrics(y[i], p[i])
            ra, rf = self._metrics(y[i], r[i])
            da.append(pa - ra)
            df.append(pf - rf)
        qa, qf = np.percentile(da, [2.5, 97.5]), np.percentile(df, [2.5, 97.5])
        return (f"{100 * (a0 - a1):+.1f} [{100 * qa[0]:+.1f}, {100 * qa[1]:+.1f}] / "
                f"{100 * (f0 - f1):+.1f} [{100 * qf[0]:+.1f}, {100 * qf[1]:+.1f}]")

    def confusion(self, pred) -> tuple[np.ndarray, np.ndarray]:
        """Counts of (true class, predicted class) over the photos with a label the model can give, and per
        true class the photos where no face was found (pred -1). Rows and columns in the model's label order."""
        keep = self.y >= 0
        y, p = self.y[keep], pred[keep]
        found = p >= 0
        cm = confusion_matrix(y[found], p[found], len(self.labels))
        return cm, np.bincount(y[~found], minlength=len(self.labels))

    def per_class(self, pred):
        keep = (self.y >= 0) & (pred >= 0)
        cm = confusion_matrix(self.y[keep], pred[keep], len(self.labels))
        prec, rec, f1, support = precision_recall_f1(cm)
        return [(self.labels[i], float(prec[i]), float(rec[i]), float(f1[i]), int(support[i]))
                for i in range(len(self.labels))]


def crop_probs(clf, images, dets, crop: CropSpec, spec=None):
    """(indices of the images with a detection, the model's probabilities for the crop of each)."""
    idx = [i for i, d in enumerate(dets) if d is not None]
    crops = [crop_faces(as_gray(images[i]), [dets[i]], crop)[0] for i in idx]
    if not crops:
        return idx, np.zeros((0, len(clf.labels)), np.float32)
    old = clf.spec
    if spec is not None:
        clf.spec = spec
    try:
        return idx, clf.predict_proba(crops)
    finally:
        clf.spec = old


def predict_crops(clf, images, dets, crop: CropSpec, spec=None):
    """Model label id per image from the crop of its detection (-1 where no detection)."""
    idx, probs = crop_probs(clf, images, dets, crop, spec)
    pred = np.full(len(images), -1, np.int64)
    pred[idx] = probs.argmax(1)
    return pred


def multi_crop_probs(clf, images, dets, base: CropSpec, scales):
    """(indices of the images with a detection, mean probabilities over crops at each scale of ``scales``;
    shift and alignment as in ``base``)."""
    idx, total = None, None
    for s in scales:
        idx, p = crop_probs(clf, images, dets, base.with_(scale=float(s)))
        total = p.astype(np.float64) if total is None else total + p
    return idx, total / len(scales)


def fer2013_pipeline(clf, fer_path: Path, split: str, detector: str, base: CropSpec, scales):
    """Each 48x48 FER2013 face of ``split`` run through the photo pipeline (detection on the face as an
    image, then the crop): accuracy with the single default crop and with the mean over ``scales``.
    A face not found counts as wrong."""
    from ferkit.data.fer2013 import load_fer2013

    fer = load_fer2013(fer_path)
    idx = fer.split(split)
    images = [fer.images[i] for i in idx]
    y = fer.labels[idx]
    dets, counts, _ = run_detector(images, detector)
    out = {"n": len(images), "found": float((counts > 0).mean())}
    for key, scs in (("single", [base.scale]), ("multi", list(scales))):
        found, probs = multi_crop_probs(clf, images, dets, base, scs)
        pred = np.full(len(images), -1, np.int64)
        pred[found] = probs.argmax(1)
        out[key] = float((pred == y).mean())
    return out


def parse_grid(text: str, types: dict) -> list[dict]:
    """'a=1,2;b=x,y' -> the list of dicts of the cartesian product (values cast by ``types``)."""
    keys, values = [], []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in types:
            raise SystemExit(f"unknown sweep key {k!r}; known: {', '.join(types)}")
        cast = types[k]
        keys.append(k)
        values.append([cast(x) for x in v.split(",") if x.strip()])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _bool(x: str) -> bool:
    return x.strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------------- framing
def fer2013_framing(fer_path: Path, detectors, n: int, seed: int = 0):
    """Where each detector's box sits in FER2013 faces -> the CropSpec that reproduces FER2013 framing.

    FER2013 images are upscaled 4x (bicubic) so the detectors see them at a normal size; the median over
    the images with a detection of scale = 48 / sqrt(w h), shift = (frame centre - box centre) / sqrt(w h).
    """
    import cv2

    from ferkit.data.fer2013 import load_fer2013

    fer = load_fer2013(fer_path)
    rng = np.random.default_rng(seed)
    train = fer.split("Training")
    pick = rng.choice(train, size=min(n, train.size), replace=False)
    rows = []
    for name in detectors:
        stats = []
        for i in pick:
            img = cv2.resize(fer.images[i], (192, 192), interpolation=cv2.INTER_CUBIC)
            d = detect_faces(img, name, min_side=None)
            if not d:
                continue
            x, y, w, h = (v / 4.0 for v in d[0].box)
            ref = float(np.sqrt(w * h))
            stats.append((48.0 / ref, (24.0 - (x + w / 2)) / ref, (24.0 - (y + h / 2)) / ref, w / h))
        s = np.asarray(stats)
        if s.size == 0:
            rows.append((name, 0.0, "-", "-", "-", "-"))
            continue
        med = np.median(s, axis=0)
        q1, q3 = np.percentile(s, 25, axis=0), np.percentile(s, 75, axis=0)
        rows.append((name, len(s) / len(pick), f"{med[0]:.3f} [{q1[0]:.2f}, {q3[0]:.2f}]",
                     f"{med[1]:+.3f}", f"{med[2]:+.3f} [{q1[2]:+.2f}, {q3[2]:+.2f}]", f"{med[3]:.3f}"))
    table(["detector", "found", "scale (median [IQR])", "shift_x", "shift_y (median [IQR])", "box w/h"], rows,
          f"FER2013 framing: the crop that reproduces FER2013's frame around each detector's box "
          f"({len(pick)} Training faces, 4x upscaled)")


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="faces-dev folder (default: $FERKIT_DATA_DIR/faces-dev or ../shared/data/faces-dev), "
                                   "or any folder of labelled photos: <root>/<class>/* (class names as ferkit's "
                                   "folder reader knows them: angry, happiness, surprised, ...)")
    ap.add_argument("--model", default=None, help="an .onnx model (default: the bundled model)")
    ap.add_argument("--tta", default=None, choices=("none", "flip", "tencrop"),
                    help="test-time augmentation (default: the model's own)")
    ap.add_argument("--detectors", default="yunet,haar")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos")
    ap.add_argument("--sweep-crop", default=None, metavar="GRID",
                    help="e.g. 'scale=1.0,1.2;shift_y=-0.05,0,0.05;shift_x=0;align=0,1' (default detector)")
    ap.add_argument("--sweep-align", action="store_true", help="alignment off vs on for each detector")
    ap.add_argument("--sweep-preprocess", default=None, metavar="GRID",
                    help="e.g. 'equalize=0,1;gamma=1,1.5;blur_sigma=0,0.6' (PreprocessSpec fields)")
    ap.add_argument("--sweep-confidence", default=None, metavar="LIST", help="e.g. 0.3,0.5,0.7 (each detector)")
    ap.add_argument("--framing", action="store_true", help="estimate FER2013 framing per detector (needs FER2013)")
    ap.add_argument("--fer2013", default=None, help="fer2013.csv(.gz) for --framing")
    ap.add_argument("--framing-n", type=int, default=2000)
    ap.add_argument("--multi-crop", default=None, metavar="SCALES",
                    help="e.g. 1.0,1.12,1.25: the mean of the crops at these scales against the default single crop "
                         "(first detector; paired bootstrap CI), and the same on FER2013 PublicTest run through "
                         "the pipeline when FER2013 is found")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    results: dict = {}

    if args.framing:
        fer = Path(args.fer2013) if args.fer2013 else data_dir(None).parent / "fer2013" / "fer2013.csv.gz"
        if not fer.is_file():
            print(f"FER2013 not found at {fer}; skipping --framing")
        else:
            fer2013_framing(fer, detectors, args.framing_n)

    root = data_dir(args.data)
    if args.data is not None and not root.is_dir():
        print(f"error: {root} is not a folder (faces-dev, or labelled photos in <class> folders)", file=sys.stderr)
        return 2
    if not (root / "labels.csv").is_file() and args.data is None:
        print(f"faces-dev not found at {root}; nothing to evaluate (skipped)")
        return 0
    try:
        images, y, names = load_faces_dev(root, args.limit)
    except FerkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "faces-dev" if (root / "labels.csv").is_file() else "labelled photos"
    print(f"{kind}: {len(images)} photos from {root}; machine: {os.cpu_count()} CPUs")

    # detection
    dets, rows = {}, []
    for name in detectors:
        try:
            best, counts, ms = run_detector(images, name)
        except FerkitError as e:
            print(f"{name}: unavailable ({e})")
            continue
        dets[name] = best
        rows.append((name, float((counts > 0).mean()), float((counts > 1).mean()), f"{ms:.1f}"))
        results.setdefault("detection", {})[name] = {"found": float((counts > 0).mean()),
                                                     "more_than_one": float((counts > 1).mean()), "ms_per_image": ms}
    table(["detector", "photos with a face", "photos with >1 detection", "ms / photo"], rows,
          "Face detection (default settings)")

    if args.sweep_confidence:
        rows = []
        for name in dets:
            for c in [float(v) for v in args.sweep_confidence.split(",")]:
                _, counts, ms = run_detector(images, name, confidence=c)
                rows.append((name, f"{c:g}", float((counts > 0).mean()), float((counts > 1).mean()), f"{ms:.1f}"))
        table(["detector", "confidence", "photos with a face", ">1 detection", "ms / photo"], rows,
              "Detection vs confidence threshold")

    # emotions
    try:
        from ferkit.runtime import EmotionClassifier

        clf = EmotionClassifier(args.model, tta=args.tta)
    except (FerkitError, ImportError) as e:
        print(f"\nno classifier ({e}); emotion metrics skipped")
        _dump(args.json, results)
        return 0
    sc = Scorer(clf, y)
    print(f"\nmodel: {clf.path} labels={list(clf.labels)} tta={clf.tta} preprocess={clf.spec}")
    rows = []
    whole = clf.predict_proba([as_gray(im) for im in images]).argmax(1)
    acc, f1, n = sc.score(whole)
    rows.append(("baseline: whole photo, no detector", "-", n, acc, f1, "-", "-"))
    results["baseline_whole_photo"] = {"accuracy": acc, "macro_f1": f1}
    default_preds = {}
    for name in dets:
        crop = default_crop(name)
        pred = predict_crops(clf, images, dets[name], crop)
        default_preds[name] = pred
        found = pred >= 0
        a_all, f_all, n_all = sc.score(pred)
        a_f, f_f, n_f = sc.score(pred, found)
        rows.append((f"{name} + crop {crop.scale:g}/{crop.shift_y:+g}{' aligned' if crop.align else ''}",
                     float(found.mean()), n_all, a_all, f_all, a_f, f_f))
        results.setdefault("pipeline", {})[name] = {"crop": crop.to_dict(), "found": float(found.mean()),
                                                    "accuracy_all": a_all, "macro_f1_all": f_all,
                                                    "accuracy_found": a_f, "macro_f1_found": f_f}
    table(["pipeline", "found", "n", "accuracy (all)", "macro-F1 (all)", "accuracy (found)", "macro-F1 (found)"],
          rows, f"Emotion, end to end (macro-F1 over the {len(sc.present)} classes present)")
    first = next(iter(dets), None)
    if first is not None:
        table(["class", "precision", "recall", "F1", "support"], sc.per_class(default_preds[first]),
              f"Per class, {first} pipeline (photos with a face)")
        cm, no_face = sc.confusion(default_preds[first])
        table(["true \\ predicted", *clf.labels, "no face"],
              [(name, *map(int, cm[i]), int(no_face[i])) for i, name in enumerate(clf.labels) if i in sc.present],
              f"Confusion, {first} pipeline (rows: the photos' labels; classes faces-dev has no photo of left out)")
        results["confusion"] = {"detector": first, "labels": list(clf.labels), "matrix": cm.tolist(),
                                "no_face": no_face.tolist()}

    if args.sweep_align:
        rows = []
        for name in dets:
            base = default_crop(name)
            ref = default_preds[name]
            for al in (False, True):
                pred = predict_crops(clf, images, dets[name], base.with_(align=al))
                a, f, n = sc.score(pred, pred >= 0)
                rows.append((name, "on" if al else "off", n, a, f, sc.delta(pred, ref, pred >= 0)))
        table(["detector", "alignment", "n", "accuracy (found)", "macro-F1 (found)",
               "vs default: d acc [95% CI] / d macro-F1 [95% CI] (points)"], rows,
              "Eye-level alignment (needs landmarks: YuNet only; Haar rows are identical by construction)")

    if args.sweep_crop:
        grid = parse_grid(args.sweep_crop, {"scale": float, "shift_x": float, "shift_y": float, "align": _bool})
        for name in dets:
            base = default_crop(name)
            rows = []
            ref = default_preds[name]
            for g in grid:
                crop = replace(base, **g)
                pred = predict_crops(clf, images, dets[name], crop)
                a, f, n = sc.score(pred, pred >= 0)
                rows.append((crop.scale, crop.shift_x, crop.shift_y, crop.align, n, a, f,
                             sc.delta(pred, ref, pred >= 0)))
                results.setdefault("sweep_crop", []).append({"detector": name, **crop.to_dict(),
                                                             "accuracy": a, "macro_f1": f})
            rows.sort(key=lambda r: -r[-2])
            table(["scale", "shift_x", "shift_y", "align", "n", "accuracy", "macro-F1",
                   "vs default: d acc [95% CI] / d macro-F1 [95% CI] (points)"], rows,
                  f"Crop sweep, {name} (photos with a face; best macro-F1 first)")

    if args.multi_crop and dets:
        scales = [float(v) for v in args.multi_crop.split(",") if v.strip()]
        name = next(iter(dets))
        base = default_crop(name)
        ref = default_preds[name]
        found, probs = multi_crop_probs(clf, images, dets[name], base, scales)
        pred = np.full(len(images), -1, np.int64)
        pred[found] = probs.argmax(1)
        a_all, f_all, n_all = sc.score(pred)
        a_ref, f_ref, _ = sc.score(ref)
        rows = [(f"single crop {base.scale:g}", n_all, a_ref, f_ref, "-"),
                (f"mean of crops {'/'.join(f'{v:g}' for v in scales)}", n_all, a_all, f_all,
                 sc.delta(pred, ref, n_boot=2000))]
        mc = {"detector": name, "scales": scales, "accuracy_all": a_all, "macro_f1_all": f_all,
              "single_accuracy_all": a_ref, "single_macro_f1_all": f_ref}
        fer = data_dir(None).parent / "fer2013" / "fer2013.csv.gz"
        if fer.is_file() and tuple(clf.labels) == EMOTIONS:  # FER2013's ids are this label order
            r = fer2013_pipeline(clf, fer, "PublicTest", name, base, scales)
            mc["fer2013_publictest_pipeline"] = r
            rows.append((f"FER2013 PublicTest through the pipeline (found {r['found']:.4f}): single / mean",
                         r["n"], r["single"], r["multi"], f"{100 * (r['multi'] - r['single']):+.2f}"))
        results["multi_crop"] = mc
        table(["pipeline", "n", "accuracy (all)", "macro-F1 (all)",
               "vs single: d acc [95% CI] / d macro-F1 [95% CI] (points)"], rows,
              f"Multi-crop averaging, {name} (shift {base.shift_y:+g}{', aligned' if base.align else ''}; "
              f"a photo without a face counts as wrong; FER2013 row: accuracy single / mean, d acc)")

    if args.sweep_preprocess:
        grid = parse_grid(args.sweep_preprocess, {"equalize": _bool, "gamma": float, "blur_sigma": float})
        name = next(iter(dets))
        crop = default_crop(name)
        rows = []
        for g in grid:
            spec = replace(clf.spec, **g)
            pred = predict_crops(clf, images, dets[name], crop, spec=spec)
            a, f, n = sc.score(pred, pred >= 0)
            rows.append((spec.equalize, spec.gamma, spec.blur_sigma, n, a, f,
                         sc.delta(pred, default_preds[name], pred >= 0)))
            results.setdefault("sweep_preprocess", []).append({**spec.to_dict(), "accuracy": a, "macro_f1": f})
        table(["equalize", "gamma", "blur_sigma", "n", "accuracy", "macro-F1",
               "vs model's own: d acc [95% CI] / d macro-F1 [95% CI] (points)"], rows,
              f"Inference-time preprocessing sweep, {name} (the model was trained with {clf.spec})")
    _dump(args.json, results)
    return 0


def _dump(path, results):
    if path:
        Path(path).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())

"""ferkit's bundled model against the ``fer`` package's bundled model, side by side in one run.

    python benchmarks/bench_vs_fer.py                         # PublicTest + PrivateTest, ~1-2 minutes
    python benchmarks/bench_vs_fer.py --limit 500 --threads 1 # quick look
    python benchmarks/bench_vs_fer.py --no-fer                # ferkit rows only
    python benchmarks/bench_vs_fer.py --no-faces-dev          # FER2013 crops only (skip the real photos)

Both models see the same faces: the 48x48 FER2013 crops of PublicTest and PrivateTest exactly as stored
in the CSV (``--csv``, default ``../shared/data/fer2013/fer2013.csv.gz``, read with
:func:`ferkit.data.fer2013.load_fer2013`). There is no face detection (the faces are already crops).

- **ferkit**: :class:`ferkit.runtime.EmotionClassifier` with the bundled default model (or ``--model``),
  through its normal path (:func:`ferkit.preprocess.prepare_faces`, onnxruntime, the model's default
  test-time augmentation from its metadata: the number a user of ``ferkit.analyze`` gets).
- **fer (keras)**, the baseline: the Keras model file shipped inside the ``fer`` package
  (``fer/data/emotion_model.hdf5``, a mini-Xception with 64x64 input), loaded with
  ``tensorflow.keras.models.load_model(path, compile=False)`` and preprocessed as ``fer.FER.detect_emotions``
  does once it has a face crop: gray -> ``cv2.resize`` to the model's input size (bilinear) -> /255 ->
  (x - 0.5) * 2, then ``model(batch)``. fer's own detection-only steps (squaring the box, its 10-pixel
  offsets and 40-pixel border padding) are not applied: the FER2013 crop is the face box.
- **fer (tflite)**, extra row when ``tf.lite`` is available: ``fer/data/emotion_model_quantized.tflite``, the
  quantized model that ``fer.FER()`` uses by default (``use_tflite=True``), same preprocessing, run one face
  per ``invoke()`` as fer runs it.

fer's label order is angry, disgust, fear, happy, sad, surprise, neutral (``fer.FER._get_labels``), the same
ids as FER2013; predictions of every model are mapped to FER2013 ids by label name before scoring.

Columns: accuracy and macro-F1 (:mod:`ferkit.metrics`, over the 7 classes), log-loss (mean negative
log-likelihood of the true label, nats) and ECE (expected calibration error of the top probability, 15 bins:
how far a model's stated confidence is from how often it is right), faces/s at batch 64 (the whole
split in batches of 64, preprocessing included, best of ``--rounds`` passes, the passes interleaved
across models so that someone else's load does not hit one model only), and ratios against fer (keras)
on the same split in the same run. All engines use ``--threads`` threads. With FER+'s ``fer2013new.csv``
(``--ferplus``, found next to ``--csv`` by default) the same predictions are also scored against the FER+
majority vote of 10 annotators, on the faces where it is clear (FER2013's single labels are noisy: the two
agree on about two images in three).

Real photos, end to end (faces-dev, ``../shared/data/faces-dev``, or ``--faces-dev DIR``; skipped with a line
when the folder is absent): every photo goes through each package's whole pipeline as its user calls it, face
detection included, and the largest face found counts (a photo without a face counts as wrong):

- **ferkit**: ``ferkit.analyze(photo, model=--model)`` (YuNet, the measured crop, eye alignment, the bundled
  default model).
- **fer**: ``fer.fer.FER().detect_emotions(photo)`` with fer's defaults (OpenCV's Haar cascade, minimum face
  50 px, the quantized tflite model); fer rounds its scores to two decimals, and its top emotion is the first
  of the highest (``max`` over its dict, as ``FER.top_emotion`` does).
- **fer on ferkit's faces**: fer's classifier given ferkit's YuNet box (``detect_emotions(photo,
  face_rectangles=[box])``), which separates what fer loses in detection from what it loses in classification;
  its time column is "-" (the detection is ferkit's).

Columns: photos with a face, accuracy and macro-F1 over the classes present (faces-dev has no fear photo; a
"fear" answer counts as wrong), the same on the photos where that pipeline found a face, milliseconds per photo
(reading excluded, detection included; one pass), and the difference to fer with a 95% paired bootstrap
interval over photos. faces-dev's labels are crowd-sourced and noisy, and ferkit's crop and alignment defaults
were chosen on it, so ferkit's row there is slightly optimistic.

Caveat on fer's numbers: fer credits its model to oarriaga/face_classification, whose training script
(``train_emotion_classifier.py`` with ``split_data(validation_split=0.2)``, no shuffle) trains on the first
80% of fer2013.csv's rows (= Training) and keeps the checkpoint with the best loss on the last 20%
(= PublicTest + PrivateTest). If the shipped file is that checkpoint, fer's model was selected on
PrivateTest, which flatters its PrivateTest row a little; ferkit's models are selected on PublicTest only.

fer's optional dependencies (the ``benchmarks`` extra; ``fer`` itself with ``--no-deps`` because its own
dependency list pulls facenet-pytorch, which would replace the project's torch):

    pip install "tensorflow-cpu==2.21.0" "setuptools<82" && pip install --no-deps "fer==25.10.3"

(``fer.fer`` imports ``pkg_resources``, which setuptools 82 removed; only the real-photo rows import it.)
Without them the fer rows are skipped with a line saying why, and ferkit's rows are still printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import _table  # noqa: E402

import cv2  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.labels import EMOTIONS  # noqa: E402

DATA = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
DEFAULT_CSV = DATA / "fer2013" / "fer2013.csv.gz"
SPLITS = ("PublicTest", "PrivateTest")
BATCH = 64
# fer.FER._get_labels(): output column i of fer's models is this emotion
FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_INSTALL = 'pip install "tensorflow-cpu==2.21.0" "setuptools<82" && pip install --no-deps "fer==25.10.3"'
BASELINE = "fer (keras)"


class BackendUnavailable(Exception):
    """A model of the comparison cannot run here (package missing); the message says why."""


@dataclass
class Engine:
    """One model under test: ``predict_batch`` maps uint8 (N, 48, 48) faces to float (N, 7) probabilities,
    columns in FER2013's label order (``EMOTIONS``)."""

    name: str
    description: str
    predict_batch: Callable[[np.ndarray], np.ndarray]


@dataclass
class Row:
    model: str
    split: str
    faces: int
    accuracy: float
    macro_f1: float
    faces_per_s: float
    speed_vs_fer: float | None = None
    accuracy_minus_fer: float | None = None  # percentage points
    ferplus_faces: int | None = None      # faces with a clear FER+ majority in the 7 classes
    accuracy_ferplus: float | None = None  # accuracy against that majority (same predictions)
    log_loss: float | None = None          # mean negative log-likelihood of the true label (nats)
    ece: float | None = None               # expected calibration error of the top probability (15 bins)


def label_map(model_labels: Sequence[str], who: str) -> np.ndarray:
    """Output column index -> FER2013 id (0..6), by label name; a model without the 7 FER2013 classes is refused."""
    missing = [e for e in EMOTIONS if e not in model_labels]
    if missing or len(model_labels) != len(EMOTIONS):
        raise FerkitError(
            f"{who} has labels {list(model_labels)}; this comparison needs a 7-class FER2013 model "
            f"({', '.join(EMOTIONS)}); pass one with --model"
        )
    return np.array([EMOTIONS.index(name) for name in model_labels], dtype=np.int64)


def to_fer_columns(probs: np.ndarray, to_fer: np.ndarray) -> np.ndarray:
    """A model's (N, 7) probabilities -> the same probabilities with columns in FER2013's label order."""
    out = np.empty_like(probs)
    out[:, to_fer] = probs
    return out


# -- ferkit ------------------------------------------------------------------------------------------

def ferkit_engine(model: str | None, threads: int) -> Engine:
    from ferkit.runtime import EmotionClassifier

    clf = EmotionClassifier(model, threads=threads, batch_size=BATCH)
    to_fer = label_map(clf.labels, f"ferkit model {clf.path}")

    def predict(faces: np.ndarray) -> np.ndarray:
        return to_fer_columns(clf.predict_proba(faces), to_fer)

    desc = (f"ferkit: {clf.path.name} (arch {clf.metadata.get('arch')}, input {clf.input_size}x{clf.input_size}, "
            f"tta {clf.tta}, onnxruntime, {clf.threads} threads)")
    return Engine("ferkit", desc, predict)


# -- fer -------------------------------------------------------------------------------------------

def fer_data_dir() -> Path:
    """``fer/data`` of the installed ``fer`` package, found without importing it (its __init__ imports TF)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"the fer package is not installed (install: {FER_INSTALL})")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (data / "emotion_model.hdf5").is_file():
        raise BackendUnavailable(f"fer is installed but has no data/emotion_model.hdf5 in {data} (reinstall: {FER_INSTALL})")
    return data


def import_tensorflow(threads: int):
    """TensorFlow with ``threads`` intra-op threads, its logging quiet; BackendUnavailable when missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("tensorflow") is None:
        raise BackendUnavailable(f"tensorflow is not installed; fer runs its model with it (install: {FER_INSTALL})")
    try:
        import tensorflow as tf
    except Exception as e:  # a broken install: say so and go on with ferkit's rows
        raise BackendUnavailable(f"tensorflow failed to import ({type(e).__name__}: {e}); (re)install: {FER_INSTALL}")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process (e.g. a second call): keeps its first setting
    return tf


def fer_preprocess(faces: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """fer's face-crop preprocessing: uint8 gray (N, H, W) -> float32 (N, h, w, 1) in [-1, 1].

    ``size`` = (width, height) for ``cv2.resize`` (bilinear, cv2's default, as in fer), then /255 and
    (x - 0.5) * 2 (``fer.FER.detect_emotions``); the channel axis is added last (NHWC, Keras).
    """
    resized = np.stack([cv2.resize(f, size) for f in faces]).astype(np.float32)
    resized = resized / 255.0
    resized = (resized - 0.5) * 2.0
    return resized[..., None]


def fer_keras_engine(threads: int) -> Engine:
    data = fer_data_dir()
    tf = import_tensorflow(threads)
    try:
        from tensorflow.keras.models import load_model  # as fer.fer imports it
    except ImportError:
        from keras.models import load_model
    path = data / "emotion_model.hdf5"
    model = load_model(str(path), compile=False)
    h, w = (int(v) for v in model.input_shape[1:3])
    n_out = int(model.output_shape[-1])
    to_fer = label_map(FER_LABELS[:n_out], f"fer model {path}")

    def predict(faces: np.ndarray) -> np.ndarray:
        x = fer_preprocess(faces, (w, h))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns that a bare array does not match the input name
            probs = np.asarray(model(x))  # fer calls the model object on the batch (eager)
        return to_fer_columns(probs, to_fer)

    desc = (f"fer (keras): fer/data/emotion_model.hdf5 ({model.count_params():,} parameters, input {w}x{h}), "
            f"tensorflow {tf.__version__} / keras, model(batch), {threads} intra-op threads")
    return Engine(BASELINE, desc, predict)


def fer_tflite_engine(threads: int) -> Engine:
    data = fer_data_dir()
    path = data / "emotion_model_quantized.tflite"
    if not path.is_file():
        raise BackendUnavailable(f"this fer version ships no {path.name}")
    tf = import_tensorflow(threads)
    lite = getattr(tf, "lite", None)
    if lite is None or not hasattr(lite, "Interpreter"):
        raise BackendUnavailable(f"tensorflow {tf.__version__} has no tf.lite.Interpreter (fer's tflite path needs it)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter deprecation notice
        interp = lite.Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    n_out = int(out["shape"][-1])
    to_fer = label_map(FER_LABELS[:n_out], f"fer model {path}")

    def predict(faces: np.ndarray) -> np.ndarray:
        x = fer_preprocess(faces, (w, h))
        probs = np.empty((len(x), n_out), np.float32)
        for i in range(len(x)):  # fer.FER._classify_emotions: one invoke() per face
            interp.set_tensor(inp["index"], x[i:i + 1])
            interp.invoke()
            probs[i] = interp.get_tensor(out["index"])[0]
        return to_fer_columns(probs, to_fer)

    desc = (f"fer (tflite): fer/data/{path.name} (fer.FER()'s default model, input {w}x{h}), "
            f"tf.lite.Interpreter, one face per invoke(), {threads} threads")
    return Engine("fer (tflite)", desc, predict)


# -- measuring ------------------------------------------------------------------------------------

def predict_split(engine: Engine, faces: np.ndarray) -> tuple[np.ndarray, float]:
    """All faces in batches of 64 -> (probabilities (N, 7) in FER2013's label order, seconds of wall time,
    preprocessing included)."""
    t0 = time.perf_counter()
    parts = [engine.predict_batch(faces[lo:lo + BATCH]) for lo in range(0, len(faces), BATCH)]
    dt = time.perf_counter() - t0
    return (np.concatenate(parts) if parts else np.zeros((0, len(EMOTIONS)), np.float32)), dt


def evaluate(engines: list[Engine], splits: dict[str, tuple[np.ndarray, np.ndarray]], rounds: int,
             ferplus: dict[str, np.ndarray] | None = None) -> list[Row]:
    """Accuracy, macro-F1, log-loss, calibration error and best-of-``rounds`` faces/s of every engine on every
    split (interleaved).

    ferplus: per split, the FER+ majority label (FER2013 ids, -1 = no clear majority) of every face; the
    same predictions are then also scored against it."""
    from ferkit.metrics import accuracy, calibration, cross_entropy, macro_f1

    for e in engines:  # warm-up: first calls trace graphs / allocate arenas
        e.predict_batch(next(iter(splits.values()))[0][:BATCH])
    probs: dict[tuple[str, str], np.ndarray] = {}
    best: dict[tuple[str, str], float] = {}
    for r in range(rounds):
        for e in engines:
            for split, (faces, _) in splits.items():
                p, dt = predict_split(e, faces)
                key = (e.name, split)
                if r == 0:
                    probs[key] = p
                elif not np.array_equal(probs[key].argmax(1), p.argmax(1)):  # scores come from the first pass
                    changed = int((probs[key].argmax(1) != p.argmax(1)).sum())
                    print(f"note: {e.name} changed {changed} predictions on {split} between passes (not deterministic)")
                best[key] = min(best.get(key, float("inf")), dt)
    rows = []
    for e in engines:
        for split, (faces, y_true) in splits.items():
            p = probs[(e.name, split)]
            y_pred = p.argmax(axis=1)
            dt = best[(e.name, split)]
            row = Row(e.name, split, len(faces), accuracy(y_true, y_pred), macro_f1(y_true, y_pred, len(EMOTIONS)),
                      len(faces) / dt if dt > 0 else float("inf"), log_loss=cross_entropy(p, y_true),
                      ece=calibration(p, y_true)["ece"])
            if ferplus is not None and split in ferplus:
                keep = ferplus[split] >= 0
                row.ferplus_faces = int(keep.sum())
                row.accuracy_ferplus = accuracy(ferplus[split][keep], y_pred[keep]) if keep.any() else None
            rows.append(row)
    by_key = {(r.model, r.split): r for r in rows}
    for row in rows:
        base = by_key.get((BASELINE, row.split))
        if base is not None:
            row.speed_vs_fer = row.faces_per_s / base.faces_per_s
            row.accuracy_minus_fer = 100.0 * (row.accuracy - base.accuracy)
    return rows


def ferplus_labels(args, data, splits_wanted: list[str]) -> dict[str, np.ndarray] | None:
    """The FER+ majority label of every face of each wanted split (FER2013 ids, -1 = none), or None."""
    if args.ferplus is None:
        beside = Path(args.csv).parent / "fer2013new.csv"
        if not beside.is_file():
            return None
        args.ferplus = str(beside)
    from ferkit.data import prepare_splits

    fp = prepare_splits(data, label_set="fer7", ferplus=args.ferplus)  # FER+ majority, clear ones only
    by_row = {}
    for role in ("train", "val", "test"):
        sub = fp.get(role)
        by_row.update(zip(sub.rows.tolist(), sub.labels.tolist()))
    out = {}
    for name in splits_wanted:
        rows = data.rows[data.split(name)[: args.limit]]
        out[name] = np.array([by_row.get(r, -1) for r in rows.tolist()], dtype=np.int64)
    return out


# -- real photos, end to end (faces-dev) ---------------------------------------------------------------

@dataclass
class PhotoEngine:
    """One whole pipeline: ``analyze`` maps a BGR photo to the FER2013 id of its largest face (-1: no face).

    ``timed``: whether its milliseconds per photo mean something (False when it reuses another's detection)."""

    name: str
    description: str
    analyze: Callable[[np.ndarray], int]
    timed: bool = True


def default_faces_dev() -> Path:
    return DATA / "faces-dev"


def ferkit_photo_engine(model: str | None, threads: int) -> tuple[PhotoEngine, Callable[[np.ndarray], list]]:
    """ferkit.analyze as a user calls it; also returns the analyzer's detect step (for fer on ferkit's faces)."""
    from ferkit.pipeline import get_analyzer

    analyzer = get_analyzer(model, threads=threads)
    labels = tuple(analyzer.labels)
    to_fer = label_map(labels, f"ferkit model {model or 'default'}")

    def analyze(photo: np.ndarray) -> int:
        faces = analyzer.analyze(photo)  # largest face first
        return int(to_fer[labels.index(faces[0].emotion)]) if faces else -1

    desc = (f"ferkit (photos): ferkit.analyze(photo, model={model or 'None'}): detector "
            f"{type(analyzer.detector).__name__}, model {analyzer.classifier.path.name}, {threads} threads")
    return PhotoEngine("ferkit", desc, analyze), analyzer.detect


def fer_top_emotion(found: list[dict]) -> int:
    """fer's ``detect_emotions`` output -> the FER2013 id of the largest face's top emotion (-1: no face).

    The top emotion is the first of the highest scores in fer's dict order (``max``, as ``FER.top_emotion``);
    fer's scores are rounded to two decimals, so ties happen."""
    if not found:
        return -1
    face = max(found, key=lambda f: int(f["box"][2]) * int(f["box"][3]))  # the first of the largest
    scores = face["emotions"]
    return EMOTIONS.index(max(scores, key=scores.get))


def fer_photo_engines(threads: int, ferkit_detect: Callable[[np.ndarray], list] | None) -> list[PhotoEngine]:
    """fer.FER() with its defaults, and (given ferkit's detect step) fer's classifier on ferkit's face boxes."""
    fer_data_dir()
    import_tensorflow(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation notice
            from fer.fer import FER
    except Exception as e:  # noqa: BLE001 - e.g. no pkg_resources: say so, ferkit's rows still come
        raise BackendUnavailable(f"fer.fer failed to import ({type(e).__name__}: {e}); install: {FER_INSTALL}")
    import logging

    logging.getLogger("fer").setLevel(logging.ERROR)  # fer logs a warning for every failed resize
    detector = FER()

    engines = [PhotoEngine("fer", "fer (photos): fer.fer.FER() defaults (Haar cascade, min face 50 px, "
                                  "quantized tflite model), detect_emotions(photo)",
                           lambda photo: fer_top_emotion(detector.detect_emotions(photo)))]
    if ferkit_detect is not None:
        def on_ferkit_faces(photo: np.ndarray) -> int:
            dets = ferkit_detect(photo)
            if not dets:
                return -1
            x, y, w, h = (int(v) for v in dets[0].clipped(photo.shape[1], photo.shape[0]))  # ferkit's largest face
            return fer_top_emotion(detector.detect_emotions(photo, face_rectangles=[(x, y, w, h)]))

        engines.append(PhotoEngine("fer on ferkit's faces", "fer on ferkit's faces: fer's classifier and framing "
                                   "(FER.detect_emotions with face_rectangles) on ferkit's detector boxes",
                                   on_ferkit_faces, timed=False))
    return engines


def evaluate_photos(engines: list[PhotoEngine], photos: list[np.ndarray], y: np.ndarray) -> list[list[str]]:
    """One table row per engine: found, accuracy/macro-F1 (all photos and photos with a face), ms per photo,
    and accuracy/macro-F1 minus fer's with 95% paired bootstrap intervals."""
    from types import SimpleNamespace

    from eval_faces_dev import Scorer

    scorer = Scorer(SimpleNamespace(labels=EMOTIONS, label_set=None), y)
    preds, ms = {}, {}
    for e in engines:
        e.analyze(photos[0])  # warm-up
        t0 = time.perf_counter()
        preds[e.name] = np.array([e.analyze(p) for p in photos], dtype=np.int64)
        ms[e.name] = (time.perf_counter() - t0) / len(photos) * 1e3
    rows = []
    for e in engines:
        pred = preds[e.name]
        found = pred >= 0
        acc, f1, _ = scorer.score(pred)
        acc_f, f1_f, n_f = scorer.score(pred, found)
        vs = "-" if "fer" not in preds or e.name == "fer" else scorer.delta(pred, preds["fer"])
        rows.append([e.name + (" (baseline)" if e.name == "fer" else ""), f"{len(photos):,}", f"{found.mean():.1%}",
                     f"{acc:.1%}", f"{f1:.3f}", f"{acc_f:.1%} ({n_f:,})", f"{f1_f:.3f}",
                     f"{ms[e.name]:.1f}" if e.timed else "-", vs])
    return rows


def run_faces_dev(args) -> list[list[str]] | None:
    """The real-photo table (printed), or None when skipped."""
    from eval_faces_dev import load_faces_dev

    root = Path(args.faces_dev) if args.faces_dev else default_faces_dev()
    if not (root / "labels.csv").is_file():
        print(f"\nfaces-dev not found at {root} (no labels.csv): real-photo rows skipped")
        return None
    photos, y, _ = load_faces_dev(root, args.limit)
    if not photos:
        print(f"\nfaces-dev at {root} has no readable photo: real-photo rows skipped")
        return None
    engine, detect = ferkit_photo_engine(args.model, args.threads)
    engines = [engine]
    if not args.no_fer:
        try:
            engines += fer_photo_engines(args.threads, detect)
        except BackendUnavailable as e:
            print(f"\nfer real-photo rows skipped: {e}")
    print()
    for e in engines:
        print(f"- {e.description}")
    rows = evaluate_photos(engines, photos, y)
    present = sorted(set(int(v) for v in y))
    _table.print_table(
        f"Real photos end to end: faces-dev, {root} ({len(photos):,} photos"
        + (f", first {args.limit} (--limit)" if args.limit else "")
        + f"; macro-F1 over the {len(present)} classes present); each package's whole pipeline, the largest face",
        ["pipeline", "photos", "face found", "accuracy", "macro-F1", "accuracy (face found)",
         "macro-F1 (face found)", "ms / photo", "vs fer: d accuracy [95% CI] / d macro-F1 [95% CI] (points)"],
        rows)
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    with_fp = any(r.accuracy_ferplus is not None for r in rows)
    headers = ["model", "split", "faces", "accuracy", "macro-F1", "log-loss", "ECE", "faces/s (batch 64)",
               "speed vs fer", "accuracy vs fer"] + (["accuracy vs FER+ majority (faces)"] if with_fp else [])
    cells = [headers]
    for r in rows:
        fp = ([] if not with_fp else
              ["-" if r.accuracy_ferplus is None else f"{100 * r.accuracy_ferplus:.2f}% ({r.ferplus_faces:,})"])
        cells.append([
            r.model + (" (baseline)" if r.model == BASELINE else ""), r.split, f"{r.faces:,}",
            f"{100 * r.accuracy:.2f}%", f"{r.macro_f1:.4f}", "-" if r.log_loss is None else f"{r.log_loss:.4f}",
            "-" if r.ece is None else f"{100 * r.ece:.2f}%", f"{r.faces_per_s:,.0f}",
            "-" if r.speed_vs_fer is None else f"{r.speed_vs_fer:.2f}x",
            "-" if r.accuracy_minus_fer is None else f"{r.accuracy_minus_fer:+.2f} pts",
        ] + fp)
    _table.print_table(title, cells[0], cells[1:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default=str(DEFAULT_CSV), help="FER2013 CSV (plain or .gz); default %(default)s")
    ap.add_argument("--model", default=None, help="ferkit model: bundled name or .onnx (default: the bundled default)")
    ap.add_argument("--splits", default=",".join(SPLITS), help="comma-separated Usage values (default %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N faces of each split (quick run)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every engine (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per model and split; best counts")
    ap.add_argument("--no-fer", action="store_true", help="skip the fer rows")
    ap.add_argument("--no-tflite", action="store_true", help="skip the fer (tflite) row")
    ap.add_argument("--ferplus", default=None,
                    help="FER+ fer2013new.csv: also score every model against the FER+ majority vote "
                         "(default: fer2013new.csv next to --csv, if it is there)")
    ap.add_argument("--faces-dev", default=None, metavar="DIR",
                    help="real photos with labels.csv for the end-to-end rows (default: $FERKIT_DATA_DIR/faces-dev "
                         "or ../shared/data/faces-dev; skipped with a line when absent)")
    ap.add_argument("--no-faces-dev", action="store_true", help="skip the real-photo rows")
    ap.add_argument("--json", default=None, help="also write the rows and the setup to this JSON file")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--threads, --rounds and --limit must be positive")
    splits_wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
    cv2.setNumThreads(args.threads)

    from ferkit.data.fer2013 import load_fer2013

    try:
        data = load_fer2013(args.csv)
        splits = {}
        for name in splits_wanted:
            idx = data.split(name)[: args.limit]
            if len(idx) == 0:
                raise FerkitError(f"{args.csv} has no {name} rows")
            splits[name] = (data.images[idx], data.labels[idx])
        ferplus = ferplus_labels(args, data, splits_wanted)
        engines = [ferkit_engine(args.model, args.threads)]
    except FerkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    skipped = []
    if args.no_fer:
        skipped.append("fer rows skipped (--no-fer)")
    else:
        makers = [fer_keras_engine] + ([] if args.no_tflite else [fer_tflite_engine])
        for make in makers:
            try:
                engines.append(make(args.threads))
            except BackendUnavailable as e:
                which = "fer (keras)" if make is fer_keras_engine else "fer (tflite)"
                skipped.append(f"{which} rows skipped: {e}")
                if make is fer_keras_engine:
                    break  # no baseline: the tflite row alone would have nothing to compare with

    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}; {args.threads} threads per engine")
    print(f"data: {args.csv} (sha256 {data.sha256[:16]}...), "
          + ", ".join(f"{k} {len(v[1]):,} faces" for k, v in splits.items())
          + (f" (first {args.limit} of each split, --limit)" if args.limit else ""))
    for e in engines:
        print(f"- {e.description}")
    for line in skipped:
        print(line)

    if ferplus is not None:
        print(f"FER+ labels: {args.ferplus} (majority vote of 10 annotators; faces whose top vote is a tie, "
              "unknown, not-a-face or contempt are left out of that column)")
    rows = evaluate(engines, splits, args.rounds, ferplus)
    print_table(
        "FER2013 test splits, the CSV's 48x48 face crops as they are (no face detection), 7 classes; "
        f"faces/s at batch 64 with preprocessing, best of {args.rounds} timed pass{'es' if args.rounds > 1 else ''}; "
        "ratios vs fer (keras) in this run",
        rows,
    )
    if any(e.name == BASELINE for e in engines):
        print("\nnote: fer's model was probably checkpoint-selected on PublicTest + PrivateTest together "
              "(see this script's docstring); ferkit's on PublicTest only.")
    if skipped and not args.no_fer:
        print(f"\n(fer's column incomplete: install its optional dependencies with: {FER_INSTALL})")
    photo_rows = None
    if args.no_faces_dev:
        print("\nreal-photo rows skipped (--no-faces-dev)")
    else:
        try:
            photo_rows = run_faces_dev(args)
        except FerkitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.json:
        payload = {
            "csv": str(args.csv), "sha256": data.sha256, "limit": args.limit, "threads": args.threads,
            "rounds": args.rounds, "engines": [e.description for e in engines], "skipped": skipped,
            "rows": [asdict(r) for r in rows], "faces_dev_rows": photo_rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

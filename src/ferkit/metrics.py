"""Classification metrics in plain numpy (no torch): used by training, evaluation and benchmarks.

Conventions: ``y_true`` and ``y_pred`` are integer class ids in ``0..C-1`` (1-D, same length);
the confusion matrix has rows = true class, columns = predicted class. A class with no support
(no true samples) or never predicted gets precision/recall/F1 of 0.0 where the ratio is undefined
(scikit-learn's ``zero_division=0``), and macro averages run over all ``C`` classes.

Stable API (other modules import these names):

- :func:`softmax`, :func:`log_softmax` over the last axis (float64 internally, float32 out for softmax)
- :func:`accuracy`, :func:`confusion_matrix`, :func:`normalize_rows`
- :func:`precision_recall_f1` -> arrays (precision, recall, f1, support)
- :func:`macro_f1`, :func:`cross_entropy`
- :func:`calibration` -> expected calibration error, Brier score, reliability bins of probabilities
- :func:`scale_temperature` -> probabilities sharpened or softened by a temperature (order kept)
- :func:`paired_comparison` -> two prediction sets on the same images: who gets which right, paired standard error
- :func:`classification_report` -> the dict that ``ferkit evaluate`` reports
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import FerkitError

__all__ = [
    "softmax",
    "log_softmax",
    "accuracy",
    "confusion_matrix",
    "normalize_rows",
    "precision_recall_f1",
    "macro_f1",
    "cross_entropy",
    "calibration",
    "scale_temperature",
    "paired_comparison",
    "classification_report",
]

CALIBRATION_BINS = 15  # equal-width confidence bins for the expected calibration error (Guo et al. 2017)


def _ids(y, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise FerkitError(f"{name} must be a 1-D array of class ids, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0):
            a = a.astype(np.int64)
        else:
            raise FerkitError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _ids(y_true, "y_true"), _ids(y_pred, "y_pred")
    if t.shape != p.shape:
        raise FerkitError(f"y_true and y_pred differ in length ({len(t)} vs {len(p)})")
    return t, p


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; float32 result whose rows sum to 1."""
    return np.exp(log_softmax(logits)).astype(np.float32)


def accuracy(y_true, y_pred) -> float:
    """Share of samples whose predicted id equals the true id (0.0 for an empty input)."""
    t, p = _pair(y_true, y_pred)
    return float((t == p).mean()) if t.size else 0.0


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts, int64 (C, C): ``cm[i, j]`` = number of samples of true class i predicted as j."""
    t, p = _pair(y_true, y_pred)
    if num_classes <= 0:
        raise FerkitError(f"num_classes must be positive, got {num_classes}")
    for a, name in ((t, "y_true"), (p, "y_pred")):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise FerkitError(f"{name} holds ids outside 0..{num_classes - 1} (min {a.min()}, max {a.max()})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (each true class sums to 1; a class with no samples stays 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    s = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, s, out=np.zeros_like(cm), where=s > 0)


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 (float64, C) and support (int64, C) from a count matrix."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    pred_n = cm.sum(axis=0).astype(np.float64)
    true_n = cm.sum(axis=1)
    precision = np.divide(tp, pred_n, out=np.zeros_like(tp), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros_like(tp), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, true_n.astype(np.int64)


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over all ``num_classes`` classes."""
    return float(precision_recall_f1(confusion_matrix(y_true, y_pred, num_classes))[2].mean())


def paired_comparison(y_true, pred_a, pred_b) -> dict[str, Any]:
    """Two sets of predictions on the same images, compared image by image.

    Returns ``n``, ``accuracy_a``, ``accuracy_b``, ``difference`` (b - a, in accuracy units),
    ``a_only`` / ``b_only`` (images only a / only b gets right), ``discordant`` (their sum) and
    ``paired_se``, ``sqrt(discordant) / n``: the standard error of the difference used by ferkit's
    selection rules (the images both get right or both get wrong carry no information about which is better).
    """
    t, a = _pair(y_true, pred_a)
    _, b = _pair(y_true, pred_b)
    n = int(t.size)
    ra, rb = a == t, b == t
    a_only, b_only = int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))
    return {
        "n": n,
        "accuracy_a": float(ra.mean()) if n else 0.0,
        "accuracy_b": float(rb.mean()) if n else 0.0,
        "difference": (b_only - a_only) / n if n else 0.0,
        "a_only": a_only,
        "b_only": b_only,
        "discordant": a_only + b_only,
        "paired_se": math.sqrt(a_only + b_only) / n if n else 0.0,
    }


def cross_entropy(probs_or_logits: np.ndarray, y_true, *, from_logits: bool = False, eps: float = 1e-7) -> float:
    """Mean cross-entropy (natural log, nats) of the true class.

    ``from_logits=False``: rows are probabilities (clipped at ``eps`` before the log);
    ``from_logits=True``: rows are logits (exact log-softmax).
    """
    t = _ids(y_true, "y_true")
    x = np.asarray(probs_or_logits)
    if x.ndim != 2 or x.shape[0] != t.shape[0]:
        raise FerkitError(f"expected an (N, C) array for N={t.shape[0]} labels, got shape {x.shape}")
    if t.size == 0:
        return 0.0
    if from_logits:
        logp = log_softmax(x)[np.arange(t.size), t]
    else:
        logp = np.log(np.clip(x.astype(np.float64)[np.arange(t.size), t], eps, 1.0))
    return float(-logp.mean())


def scale_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row, float32: temperature scaling applied to probabilities.

    For one network's softmax this equals ``softmax(logits / temperature)`` (Guo et al. 2017); for an average
    over ensemble members or test-time views it rescales the averaged distribution. The order of the classes
    in each row never changes, so neither does the predicted class. ``temperature`` > 1 softens, < 1 sharpens.
    """
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise FerkitError(f"temperature must be a positive number, got {temperature!r}")
    p = np.asarray(probs, dtype=np.float64)
    if t == 1.0:
        return p.astype(np.float32)
    return softmax(np.log(np.clip(p, 1e-30, None)) / t)


def calibration(probs: np.ndarray, y_true, *, n_bins: int = CALIBRATION_BINS) -> dict:
    """How far the top probability is from the accuracy it promises.

    ``ece``: expected calibration error, the support-weighted mean over ``n_bins`` equal-width bins of the
    top-1 probability of |accuracy - mean top-1 probability| (0 = calibrated); ``mce``: the largest such gap
    over non-empty bins; ``brier``: mean squared distance between the probability rows and the one-hot true
    class (0..2); ``confidence``: the mean top-1 probability; ``bins``: [{lo, hi, n, confidence, accuracy}]
    for the non-empty bins (a reliability diagram).
    """
    t = _ids(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != t.shape[0]:
        raise FerkitError(f"expected an (N, C) array for N={t.shape[0]} labels, got shape {p.shape}")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise FerkitError(f"n_bins must be a positive integer, got {n_bins!r}")
    if t.size == 0:
        return {"ece": 0.0, "mce": 0.0, "brier": 0.0, "confidence": 0.0, "bins": []}
    if t.min() < 0 or t.max() >= p.shape[1]:
        raise FerkitError(f"labels run {t.min()}..{t.max()} but the probabilities have {p.shape[1]} classes")
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == t
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # (lo, hi]; 0 goes in bin 0
    bins, ece, mce = [], 0.0, 0.0
    for b in range(n_bins):
        m = which == b
        if not m.any():
            continue
        acc, c = float(correct[m].mean()), float(conf[m].mean())
        gap = abs(acc - c)
        ece += m.mean() * gap
        mce = max(mce, gap)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()), "confidence": c,
                     "accuracy": acc})
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return {"ece": float(ece), "mce": float(mce), "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
            "confidence": float(conf.mean()), "bins": bins}


def classification_report(
    y_true,
    y_pred,
    labels: Sequence[str],
    *,
    probs: np.ndarray | None = None,
    logits: np.ndarray | None = None,
) -> dict:
    """Everything ``ferkit evaluate`` reports, as JSON-ready Python types.

    Keys: ``n``, ``labels``, ``accuracy``, ``macro_f1``, ``loss`` (mean cross-entropy; None when neither
    ``probs`` nor ``logits`` is given; from logits when both are), ``per_class``
    ({label: {precision, recall, f1, support}}), ``confusion_matrix`` (counts, rows = true),
    ``confusion_matrix_normalized`` (rows sum to 1), ``true_counts`` / ``pred_counts`` ({label: count}),
    ``calibration`` (:func:`calibration` of ``probs``; None without ``probs``).
    """
    labels = [str(x) for x in labels]
    c = len(labels)
    t, p = _pair(y_true, y_pred)
    cm = confusion_matrix(t, p, c)
    prec, rec, f1, support = precision_recall_f1(cm)
    if logits is not None:
        loss = cross_entropy(logits, t, from_logits=True)
    elif probs is not None:
        loss = cross_entropy(probs, t)
    else:
        loss = None
    return {
        "n": int(t.size),
        "labels": labels,
        "accuracy": accuracy(t, p),
        "macro_f1": float(f1.mean()),
        "loss": loss,
        "per_class": {
            lab: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalize_rows(cm).round(6).tolist(),
        "true_counts": {lab: int(n) for lab, n in zip(labels, cm.sum(axis=1))},
        "pred_counts": {lab: int(n) for lab, n in zip(labels, cm.sum(axis=0))},
        "calibration": calibration(probs, t) if probs is not None else None,
    }

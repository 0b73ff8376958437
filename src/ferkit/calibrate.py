"""Calibrated probabilities: ``ferkit export MODEL --calibrate --data fer2013.csv.gz --out M.onnx`` (MODEL: an
exported ``.onnx``, a bundled name, or a training run, which is exported first).

A network's softmax says how sure it is, but not always truthfully: a model trained on FER+ vote
distributions spreads its probability the way ten annotators spread their votes, so a face it gets right
nine times in ten may show "happy 0.6". Temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017) fixes this with one number ``T``: the probabilities become
``softmax(log(p) / T)`` (for one network ``softmax(logits / T)``), sharper for ``T < 1``, softer for
``T > 1``. The order of the classes in each row is unchanged, so every prediction, accuracy and confusion
matrix stays exactly as it was; only the confidence moves.

``T`` minimises the negative log-likelihood of the true labels on the **PublicTest** (validation) split,
with the model's own test-time augmentation, and is written into a copy of the model as metadata
(``ferkit_temperature``) with a ``temperature_scaling`` record in its provenance (split, data sha256, the
log-likelihood and expected calibration error before and after). :class:`ferkit.runtime.EmotionClassifier`
applies it to the averaged probabilities, so ``ferkit.analyze``, the CLI, the web API and ``ferkit
evaluate`` all report calibrated probabilities. PrivateTest (the final test) is never used for fitting.

Combining calibrated models into an ensemble (``ferkit export a.onnx b.onnx``) uses their raw softmax; fit
the ensemble's own temperature afterwards.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from typing import Any

import numpy as np

from .errors import FerkitError
from .metrics import calibration, cross_entropy, scale_temperature

FIT_SPLITS = ("PublicTest", "Training")
T_MIN, T_MAX = 0.05, 20.0


def temperature_nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood (nats) of the true classes after scaling ``probs`` by ``temperature``."""
    z = np.log(np.clip(np.asarray(probs, np.float64), 1e-30, None)) / float(temperature)
    return cross_entropy(z, y, from_logits=True)  # exact log-softmax of log(p) / T


def fit_temperature(probs: np.ndarray, y_true, *, lo: float = T_MIN, hi: float = T_MAX) -> float:
    """The temperature in [lo, hi] that minimises :func:`temperature_nll`: a grid over log T, then a
    golden-section search between the best grid point's neighbours (to 1e-5 in log T)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs)
    if p.ndim != 2 or len(y) != len(p) or len(y) == 0:
        raise FerkitError(f"need (N, C) probabilities and N >= 1 labels, got {p.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise FerkitError(f"labels run {y.min()}..{y.max()} but the probabilities have {p.shape[1]} classes")
    f = lambda u: temperature_nll(p, y, math.exp(u))  # noqa: E731 - search over u = log T
    grid = np.linspace(math.log(lo), math.log(hi), 121)
    vals = [f(u) for u in grid]
    k = int(np.argmin(vals))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 1e-5:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def calibrate_onnx(model, out_path: str | os.PathLike, *, data, split: str = "PublicTest",
                   threads: int | None = None, source: str | None = None, **splits_kwargs) -> dict[str, Any]:
    """Fit the temperature of ``model`` (an ``.onnx`` path or bundled name) on ``split`` of ``data`` and write
    the model with it to ``out_path``. Other keyword arguments go to :func:`ferkit.evaluate.evaluate`
    (``ferplus=`` path of fer2013new.csv for a FER+ model). A temperature the model already has is replaced
    (the fit starts from the raw softmax). ``source``: what to record as the model's origin instead of
    ``model`` (the training run, when ``model`` is a temporary export of it; no file hash is kept then).

    Returns ``{"path", "bytes", "source", "temperature", "split", "n", "before", "after"}`` where before/after
    hold ``nll``, ``ece``, ``brier`` and ``confidence`` on the fitting split.
    """
    from .data.fer2013 import file_sha256
    from .evaluate import evaluate
    from .export import set_ferkit_metadata
    from .onnx_ensemble import _load, _out_path, _write
    from .runtime import EmotionClassifier, resolve_model_path

    if split not in FIT_SPLITS:
        raise FerkitError(f"fit the temperature on PublicTest (the validation split) or Training, not {split!r}: "
                          "PrivateTest is the final test and is never used to fit anything")
    out = _out_path(out_path)
    _, proto, meta = _load(model)
    r = evaluate(model, data, split=split, temperature=1.0, return_probs=True, threads=threads, **splits_kwargs)
    probs, y = r["probs"], r["y_true"]
    t = float(f"{fit_temperature(probs, y):.4g}")
    scaled = scale_temperature(probs, t)

    def summary(p):
        cal = calibration(p, y)
        return {"nll": round(temperature_nll(p, y, 1.0), 6), "ece": round(cal["ece"], 6),
                "brier": round(cal["brier"], 6), "confidence": round(cal["confidence"], 6)}

    before, after = summary(probs), summary(scaled)
    prov = dict(meta.get("provenance") or {})
    prov["temperature_scaling"] = {
        "temperature": t, "source": source or str(model),
        "source_sha256": None if source else file_sha256(resolve_model_path(model)),
        "split": split, "n": int(len(y)), "tta": r["tta"], "data_sha256": r.get("data_sha256"),
        "ferplus": (r.get("ferplus") or {}).get("protocol") if r.get("ferplus") else None,
        "fit": "minimum negative log-likelihood over log T in [0.05, 20]", "before": before, "after": after,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    new_meta = {**meta, "temperature": t, "provenance": prov}
    set_ferkit_metadata(proto, new_meta)
    tmp = _write(proto, out)
    try:
        clf = EmotionClassifier(tmp, threads=1)
        if clf.temperature != t:  # pragma: no cover - a guard on the metadata round trip
            raise FerkitError(f"the written model reads back temperature {clf.temperature}, not {t}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(out), "bytes": out.stat().st_size, "source": source or str(model), "temperature": t,
            "split": split,
            "n": int(len(y)), "tta": r["tta"], "before": before, "after": after, "metadata": new_meta}

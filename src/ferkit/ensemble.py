"""Choosing an ensemble on a validation split (numpy only; the export is :func:`ferkit.export.export_ensemble`).

``greedy_select`` is forward selection without replacement (Caruana et al. 2004, "Ensemble selection
from libraries of models"): start from the most accurate single model, then repeatedly add the candidate
whose inclusion gives the most accurate equal-weight mean of probabilities, and stop when no candidate
improves it. Run it on PublicTest probabilities only; PrivateTest stays untouched until the choice is made.
"""
from __future__ import annotations

import numpy as np

from .errors import FerkitError
from .metrics import accuracy


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return accuracy(y, probs.argmax(1))


def greedy_select(probs: dict[str, np.ndarray], y_true, *, max_members: int | None = None) -> list[dict]:
    """Forward selection over ``probs`` (name -> (N, C) probabilities on the validation split).

    Returns one record per step, ``{"members": [...], "accuracy": float, "added": name}``; the last record
    is the chosen ensemble. A candidate is added only if it raises accuracy strictly; ties between
    candidates go to the one listed first.
    """
    y = np.asarray(y_true)
    if not probs:
        raise FerkitError("no candidate models to select from")
    shapes = {name: np.shape(p) for name, p in probs.items()}
    for name, shape in shapes.items():
        if len(shape) != 2 or shape[0] != len(y):
            raise FerkitError(f"candidate {name!r} has probabilities of shape {shape}, expected ({len(y)}, C)")
    if len({s[1] for s in shapes.values()}) != 1:
        raise FerkitError(f"candidates disagree on the number of classes: {shapes}")
    limit = len(probs) if max_members is None else max(1, int(max_members))
    names = list(probs)
    scores = {n: _accuracy(probs[n], y) for n in names}
    best = max(names, key=lambda n: (scores[n], -names.index(n)))
    chosen = [best]
    total = np.asarray(probs[best], np.float64).copy()
    steps = [{"members": list(chosen), "accuracy": scores[best], "added": best}]
    while len(chosen) < limit:
        trial = {n: _accuracy((total + probs[n]) / (len(chosen) + 1), y) for n in names if n not in chosen}
        if not trial:
            break
        pick = max(trial, key=lambda n: (trial[n], -names.index(n)))
        if trial[pick] <= steps[-1]["accuracy"]:
            break
        chosen.append(pick)
        total += probs[pick]
        steps.append({"members": list(chosen), "accuracy": trial[pick], "added": pick})
    return steps


def normalized_weights(weights, n: int) -> list[float]:
    """One positive weight per member (None: equal) -> weights that sum to 1; anything else is an error."""
    if weights is None:
        weights = [1.0] * n
    if len(weights) != n:
        raise FerkitError(f"{len(weights)} weights for {n} ensemble members")
    if any(not (float(w) > 0) for w in weights):
        raise FerkitError(f"ensemble weights must be positive, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]

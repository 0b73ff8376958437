"""Class imbalance: loss weights and seeded over-/under-sampling index lists (numpy only).

FER2013's disgust class is 1.5% of the data and happy about 25%. Two remedies, usable together or apart:

* class-weighted loss: :func:`class_weights` gives one weight per class for ``cross_entropy(weight=...)``;
* re-sampling: :func:`epoch_indices` returns the training-set indices of one epoch, drawn so that the
  classes are (more) balanced. It is a pure function of ``(labels, mode, seed, epoch)``, so an
  interrupted run that resumes at epoch ``k`` sees exactly the epochs it would have seen, and every
  data-parallel process computes the same list (each then takes its own shard).
"""
from __future__ import annotations

import numpy as np

from ..errors import FerkitError

SAMPLING_MODES = ("none", "over", "under")
WEIGHT_MODES = ("none", "balanced", "sqrt")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of samples of each class id ``0..num_classes-1`` (int64, shape (C,))."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FerkitError(f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def class_weights(labels: np.ndarray, num_classes: int, mode: str = "balanced") -> np.ndarray:
    """Per-class loss weights (float32, shape (C,)), mean 1 over the classes present.

    mode ``balanced``: weight_c = N / (C * count_c) (rare classes count more; inverse frequency);
    ``sqrt``: the square root of that (a gentler correction); ``none``: all ones.
    Classes absent from ``labels`` get weight 1.
    """
    if mode not in WEIGHT_MODES:
        raise FerkitError(f"unknown class-weight mode {mode!r}; choose one of {', '.join(WEIGHT_MODES)}")
    counts = class_counts(labels, num_classes).astype(np.float64)
    w = np.ones(num_classes, dtype=np.float64)
    if mode == "none" or counts.sum() == 0:
        return w.astype(np.float32)
    present = counts > 0
    w[present] = counts.sum() / (present.sum() * counts[present])
    if mode == "sqrt":
        w[present] = np.sqrt(w[present])
    w[present] /= w[present].mean()
    return w.astype(np.float32)


def balanced_indices(
    labels: np.ndarray, mode: str, rng: np.random.Generator, cap: int | dict[int, int] | None = None
) -> np.ndarray:
    """Indices into ``labels`` that re-balance the classes (unshuffled, grouped by class).

    mode ``over``: every class is brought up to the largest class's count (or to ``cap``) by drawing
    extra copies at random; every original sample is kept. ``under``: every class larger than ``cap``
    (default: the smallest class's count) is cut to ``cap`` samples drawn without replacement; smaller
    classes are kept whole. ``none``: ``arange(N)``.
    ``cap`` may be one count for all classes or ``{class_id: count}`` for only the named classes
    (e.g. ``{3: 5800}``: under-sample happy to 5,800 and leave the rest alone).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if mode == "none":
        return np.arange(len(labels))
    if mode not in SAMPLING_MODES:
        raise FerkitError(f"unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}")
    caps = cap.values() if isinstance(cap, dict) else ([] if cap is None else [cap])
    if any(int(c) < 1 for c in caps):
        raise FerkitError(f"per-class sample counts must be at least 1, got {cap}")
    classes = np.unique(labels)
    by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
    counts = np.array([len(i) for i in by_class.values()])
    if isinstance(cap, dict):
        targets = {c: int(cap.get(c, len(idx))) for c, idx in by_class.items()}
    else:
        default = (counts.max() if mode == "over" else counts.min()) if len(counts) else 0
        targets = {c: int(default if cap is None else cap) for c in by_class}
    parts = []
    for c, idx in by_class.items():
        t = targets[c]
        if mode == "over":
            parts.append(idx)
            if len(idx) < t:
                parts.append(rng.choice(idx, size=t - len(idx), replace=True))
        else:
            parts.append(np.sort(rng.choice(idx, size=t, replace=False)) if len(idx) > t else idx)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def epoch_indices(
    labels: np.ndarray,
    *,
    seed: int,
    epoch: int,
    mode: str = "none",
    cap: int | dict[int, int] | None = None,
    shuffle: bool = True,
) -> np.ndarray:
    """The shuffled training indices of epoch ``epoch`` (0-based): a pure function of its arguments."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    idx = balanced_indices(labels, mode, rng, cap)
    return rng.permutation(idx) if shuffle else idx


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's share of an epoch for data-parallel training.

    Every rank gets the same number of indices (the list is padded by wrapping around), so all
    processes run the same number of steps, which DistributedDataParallel needs.
    """
    if world_size <= 1:
        return indices
    n = len(indices)
    per_rank = -(-n // world_size)
    padded = np.resize(indices, per_rank * world_size) if n else indices
    return padded[rank::world_size]

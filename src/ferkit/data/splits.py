"""Train / validation / test splits of a labelled face data set.

Default: FER2013's ``Usage`` column (Training / PublicTest for validation and model selection /
PrivateTest for the final test). Alternative: a stratified random 80/10/10 split with a seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FerkitError
from ..labels import get_label_set
from .fer2013 import USAGES, load_fer2013


@dataclass
class Subset:
    """images: uint8 (N, 48, 48); labels: int64 class ids (N,); rows: source row ids (N,);
    soft: optional float32 (N, C) target distributions (e.g. FER+ votes)."""

    images: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> "Subset":
        return Subset(self.images[idx], self.labels[idx], self.rows[idx], None if self.soft is None else self.soft[idx])


@dataclass
class Splits:
    train: Subset
    val: Subset
    test: Subset
    labels: tuple[str, ...]
    label_set: str
    info: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Subset:
        """A split by FER2013 name (Training/PublicTest/PrivateTest) or role (train/val/test)."""
        key = {"training": "train", "publictest": "val", "privatetest": "test", "train": "train", "val": "val",
               "validation": "val", "test": "test"}.get(name.lower())
        if key is None:
            raise FerkitError(f"unknown split {name!r}; use Training, PublicTest or PrivateTest (or train/val/test)")
        return getattr(self, key)


def stratified_split(labels: np.ndarray, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Indices for a stratified random split; each class is divided in ``fractions``."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    cum = np.cumsum(fractions) / np.sum(fractions)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(cum * len(idx)).astype(int)
        lo = 0
        for k, hi in enumerate(cuts):
            parts[k].append(idx[lo:hi])
            lo = hi
    return [np.sort(np.concatenate(p)) for p in parts]


def prepare_splits(
    data: str,
    *,
    label_set: str = "fer7",
    split: str = "usage",
    seed: int = 0,
    skip_bad: bool = False,
    limit: int | None = None,
) -> Splits:
    """Load a FER2013 CSV and return its splits in the chosen label set.

    split: ``usage`` (the CSV's Usage column) or ``random`` (stratified 80/10/10 with ``seed``).
    limit: keep only the first ``limit`` rows of each split (quick experiments).
    """
    ls = get_label_set(label_set)
    ds = load_fer2013(data, skip_bad=skip_bad)
    y = ls.map_fer7(ds.labels)
    keep = y >= 0
    if split == "usage":
        idx = [np.flatnonzero((ds.usage == k) & keep) for k in range(len(USAGES))]
    elif split == "random":
        kept = np.flatnonzero(keep)
        idx = [kept[i] for i in stratified_split(y[kept], seed=seed)]
    else:
        raise FerkitError(f"unknown split method {split!r}; use 'usage' or 'random'")
    if limit:
        idx = [i[:limit] for i in idx]
    subsets = [Subset(ds.images[i], y[i], ds.rows[i]) for i in idx]
    info = {
        "data": str(data), "data_sha256": ds.sha256, "label_set": ls.name, "split": split, "seed": seed,
        "skipped_rows": len(ds.skipped), "dropped_by_label_set": int((~keep).sum()),
        "sizes": {n: len(s) for n, s in zip(("train", "val", "test"), subsets)},
    }
    return Splits(*subsets, labels=ls.labels, label_set=ls.name, info=info)

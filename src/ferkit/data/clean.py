"""Opt-in data cleaning: blank images, the histogram rule, exact duplicates. Every rule reports what it removed.

Rules (applied in this order, whatever order they are given in):

* ``blank``: near-constant images, i.e. the standard deviation of the pixel values is below
  ``BLANK_STD`` (3.0 gray levels). On FER2013 this finds the all-black and the flat gray images.
* ``histogram``: the rule of one of the source projects: drop an image whose 256-bin intensity histogram
  has a bin holding more than ``HISTOGRAM_MAX_BIN`` (350) of its 2,304 pixels (large flat areas: blank
  images, "no image" placeholders, heavy clipping; it also removes some real faces on flat backgrounds).
* ``duplicates``: exact duplicates (identical pixels). Leakage across splits is reported as counts
  (train-val: validation images that also occur in train; train-test: test images that also occur in
  train; val-test: test images that also occur in validation).

Scope. By default a rule removes images from the TRAINING split only, so validation and test stay the
standard, comparable sets; hits in val/test are still counted under ``flagged``. For duplicates this
means: a training image with an identical copy in val or test is dropped (no leakage into the test
score), and within training only the first copy is kept. Write ``rule:all`` (e.g. ``histogram:all``)
to clean every split; for duplicates that keeps one copy per image, preferring test, then val, then train.

The report (``clean_splits``) per rule: ``flagged`` (hits among all images, per split and class),
``removed`` (what this rule removed after the rules before it, per split: total, per class, row ids).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np

from ..errors import FerkitError

RULES: tuple[str, ...] = ("blank", "histogram", "duplicates")
SCOPES: tuple[str, ...] = ("train", "all")
BLANK_STD = 3.0
HISTOGRAM_MAX_BIN = 350


def image_std(images: np.ndarray) -> np.ndarray:
    """Standard deviation of each image's pixel values, in gray levels (float32, (N,))."""
    return np.array([cv2.meanStdDev(np.ascontiguousarray(im))[1][0, 0] for im in images], np.float32).reshape(-1)


def blank_mask(images: np.ndarray, std_threshold: float = BLANK_STD) -> np.ndarray:
    """Bool (N,): images whose pixel standard deviation is below ``std_threshold`` gray levels."""
    return image_std(images) < std_threshold


def max_histogram_bin(images: np.ndarray) -> np.ndarray:
    """For each uint8 image, the pixel count of its fullest intensity bin (256 bins), int64 (N,)."""
    flat = np.asarray(images).reshape(len(images), -1)
    if flat.dtype != np.uint8:
        raise FerkitError(f"histogram rule needs uint8 images, got {flat.dtype}")
    return np.array([np.bincount(r, minlength=256).max() if r.size else 0 for r in flat], np.int64)


def histogram_mask(images: np.ndarray, max_bin: int = HISTOGRAM_MAX_BIN) -> np.ndarray:
    """Bool (N,): images with an intensity-histogram bin holding more than ``max_bin`` pixels."""
    return max_histogram_bin(images) > max_bin


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """Int64 (N,): a group id per image; identical images (every pixel equal) share an id."""
    flat = np.ascontiguousarray(np.asarray(images).reshape(len(images), -1))
    if len(flat) == 0:
        return np.zeros(0, np.int64)
    keys = flat.view(np.dtype((np.void, flat.shape[1] * flat.dtype.itemsize))).ravel()
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def parse_rules(clean: str | Iterable[str] | None) -> list[tuple[str, str]]:
    """``['blank', 'histogram:all']`` or ``'blank,histogram'`` -> [(rule, scope)] in canonical order."""
    if not clean:
        return []
    if isinstance(clean, str):
        clean = [clean]
    out: dict[str, str] = {}
    for item in clean:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            rule, _, scope = part.partition(":")
            rule, scope = rule.strip().lower(), (scope.strip().lower() or "train")
            if rule not in RULES:
                raise FerkitError(f"unknown cleaning rule {rule!r}; choose from {', '.join(RULES)} "
                                  "(optionally with ':all' to clean val/test too)")
            if scope not in SCOPES:
                raise FerkitError(f"unknown scope {scope!r} in cleaning rule {part!r}; use {rule} or {rule}:all")
            out[rule] = scope
    return [(r, out[r]) for r in RULES if r in out]


def _per_class(labels: np.ndarray, mask: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels[mask], minlength=len(class_names)) if mask.any() else np.zeros(len(class_names), int)
    return {name: int(c) for name, c in zip(class_names, counts)}


def duplicate_summary(groups: np.ndarray, split_of: np.ndarray, split_names: Sequence[str],
                      labels: np.ndarray | None = None) -> dict:
    """Counts of duplicate images within and across splits.

    ``groups``: duplicate-group id per image (see :func:`duplicate_groups`); ``split_of``: split index per
    image. ``within[s]``: extra copies inside split s (images minus distinct images). ``across['a-b']``:
    images of split b with an identical image in split a (a before b in ``split_names``).
    ``label_conflicts``: groups whose copies carry different labels.
    """
    groups = np.asarray(groups)
    split_of = np.asarray(split_of)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    sizes = np.bincount(groups, minlength=n_groups)
    out: dict = {
        "images": int(len(groups)),
        "distinct": int((sizes > 0).sum()),
        "extra_copies": int(len(groups) - (sizes > 0).sum()),
        "groups_with_copies": int((sizes > 1).sum()),
        "images_in_groups": int(sizes[sizes > 1].sum()),
        "within": {},
        "across": {},
    }
    present = []
    for k, name in enumerate(split_names):
        g = groups[split_of == k]
        present.append(np.zeros(n_groups, bool))
        present[k][g] = True
        out["within"][name] = int(len(g) - len(np.unique(g)))
    for a in range(len(split_names)):
        for b in range(a + 1, len(split_names)):
            gb = groups[split_of == b]
            out["across"][f"{split_names[a]}-{split_names[b]}"] = int(present[a][gb].sum())
    if labels is not None and len(groups):
        labels = np.asarray(labels)
        lo = np.full(n_groups, np.iinfo(np.int64).max)
        hi = np.full(n_groups, np.iinfo(np.int64).min)
        np.minimum.at(lo, groups, labels)
        np.maximum.at(hi, groups, labels)
        out["label_conflicts"] = int(((lo != hi) & (sizes > 1)).sum())
    return out


def _duplicate_removal(groups: np.ndarray, split_of: np.ndarray, alive: np.ndarray, scope: str) -> np.ndarray:
    """Bool mask of images to drop so that no kept image has an identical kept copy (within the scope)."""
    n = len(groups)
    drop = np.zeros(n, bool)
    idx = np.flatnonzero(alive)
    if scope == "all":
        # keep one copy per group: prefer test (2), then val (1), then train (0); within a split the first
        order = np.lexsort((idx, -split_of[idx], groups[idx]))
        sorted_idx = idx[order]
        first = np.ones(len(sorted_idx), bool)
        first[1:] = groups[sorted_idx[1:]] != groups[sorted_idx[:-1]]
        drop[sorted_idx[~first]] = True
        return drop
    # scope "train": only training images are ever dropped
    n_groups = int(groups.max()) + 1 if n else 0
    in_eval = np.zeros(n_groups, bool)
    in_eval[groups[idx[split_of[idx] != 0]]] = True
    train_idx = idx[split_of[idx] == 0]
    drop[train_idx[in_eval[groups[train_idx]]]] = True
    rest = train_idx[~in_eval[groups[train_idx]]]
    _, first_pos = np.unique(groups[rest], return_index=True)
    keep_first = np.zeros(len(rest), bool)
    keep_first[first_pos] = True
    drop[rest[~keep_first]] = True
    return drop


def clean_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    split_of: np.ndarray,
    rows: np.ndarray,
    rules: str | Iterable[str] | None,
    *,
    class_names: Sequence[str],
    split_names: Sequence[str] = ("train", "val", "test"),
    names: Sequence[str] | None = None,
    blank_std: float = BLANK_STD,
    histogram_max_bin: int = HISTOGRAM_MAX_BIN,
) -> tuple[np.ndarray, dict]:
    """Apply cleaning ``rules`` to images pooled from several splits; return (keep mask (N,), report).

    ``split_of`` is the split index of each image (0 = training), ``rows`` its source row id (reported),
    ``names`` optional per-image names (e.g. file paths, reported next to the row ids).
    """
    parsed = parse_rules(rules)
    images = np.asarray(images)
    labels = np.asarray(labels, np.int64)
    split_of = np.asarray(split_of)
    rows = np.asarray(rows)
    alive = np.ones(len(images), bool)
    report: dict = {
        "rules": [f"{r}:{s}" if s != "train" else r for r, s in parsed],
        "params": {"blank_std": blank_std, "histogram_max_bin": histogram_max_bin},
        "sizes_before": {name: int((split_of == k).sum()) for k, name in enumerate(split_names)},
        "by_rule": {},
    }
    for rule, scope in parsed:
        if rule == "blank":
            flagged = blank_mask(images, blank_std)
        elif rule == "histogram":
            flagged = histogram_mask(images, histogram_max_bin)
        else:
            groups = duplicate_groups(images)
            flagged = np.bincount(groups, minlength=int(groups.max()) + 1)[groups] > 1 if len(groups) else alive[:0]
        if rule == "duplicates":
            drop = _duplicate_removal(groups, split_of, alive, scope) & alive
        else:
            in_scope = np.ones(len(images), bool) if scope == "all" else split_of == 0
            drop = flagged & alive & in_scope
        entry: dict = {"scope": scope, "flagged": {}, "removed": {}}
        for k, name in enumerate(split_names):
            s = split_of == k
            entry["flagged"][name] = {"total": int((flagged & s).sum()), "per_class": _per_class(labels, flagged & s, class_names)}
            d = drop & s
            removed = {"total": int(d.sum()), "per_class": _per_class(labels, d, class_names),
                       "rows": [int(r) for r in rows[d]]}
            if names is not None:
                removed["files"] = [str(names[i]) for i in np.flatnonzero(d)]
            entry["removed"][name] = removed
        if rule == "duplicates":
            entry["summary"] = duplicate_summary(groups, split_of, split_names, labels)
        report["by_rule"][rule] = entry
        alive &= ~drop
    report["removed"] = {name: int((~alive & (split_of == k)).sum()) for k, name in enumerate(split_names)}
    report["sizes_after"] = {name: int((alive & (split_of == k)).sum()) for k, name in enumerate(split_names)}
    return alive, report


def quality_counts(images: np.ndarray, labels: np.ndarray, split_of: np.ndarray, *, class_names: Sequence[str],
                   split_names: Sequence[str] = ("train", "val", "test"), blank_std: float = BLANK_STD,
                   histogram_max_bin: int = HISTOGRAM_MAX_BIN) -> dict:
    """Image-quality counts without removing anything: blank and histogram-rule hits per split and class,
    and duplicates within and across splits."""
    split_of = np.asarray(split_of)
    labels = np.asarray(labels, np.int64)
    out: dict = {"params": {"blank_std": blank_std, "histogram_max_bin": histogram_max_bin}}
    for rule, mask in (("blank", blank_mask(images, blank_std)), ("histogram", histogram_mask(images, histogram_max_bin))):
        out[rule] = {name: {"total": int((mask & (split_of == k)).sum()),
                            "per_class": _per_class(labels, mask & (split_of == k), class_names)}
                     for k, name in enumerate(split_names)}
    out["duplicates"] = duplicate_summary(duplicate_groups(images), split_of, split_names, labels)
    return out

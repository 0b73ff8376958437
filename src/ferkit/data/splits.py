"""Train / validation / test splits of a labelled face data set.

Sources: the FER2013 CSV (optionally relabelled by FER+) or an image-folder tree (see ``folders``).

Split methods:

* ``usage`` (default): FER2013's ``Usage`` column (Training = train, PublicTest = val for validation and
  model selection, PrivateTest = test). For image folders: the train/val/test folders; a missing val
  (and test) folder is carved from train, stratified by class, with ``seed`` (10% each); a flat folder
  (``<root>/<class>/*``) has no splits, so it gets the random 80/10/10 split below.
* ``random``: all rows pooled, a stratified random 80/10/10 split with ``seed``.

Order of work in :func:`prepare_splits`: read -> labels (label set or FER+) -> split -> clean -> limit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import FerkitError
from ..labels import FERPLUS_EMOTIONS, get_label_set
from .fer2013 import USAGES, Fer2013, load_fer2013

SPLIT_ROLES: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Subset:
    """images: uint8 (N, 48, 48); labels: int64 class ids (N,); rows: source row ids (N,) (CSV data-row
    numbers, or indices into ``FolderData.paths`` for image folders);
    soft: optional float32 (N, C) target distributions (FER+: the vote distribution in soft mode, the one-hot
    majority label in majority mode)."""

    images: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> "Subset":
        return Subset(self.images[idx], self.labels[idx], self.rows[idx], None if self.soft is None else self.soft[idx])

    @staticmethod
    def concat(parts: "list[Subset]") -> "Subset":
        """The subsets one after the other (soft targets kept only when every part has them)."""
        soft = None if any(p.soft is None for p in parts) else np.concatenate([p.soft for p in parts])
        return Subset(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                      np.concatenate([p.rows for p in parts]), soft)


@dataclass
class Splits:
    train: Subset
    val: Subset
    test: Subset
    labels: tuple[str, ...]
    label_set: str
    info: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Subset:
        """A split by FER2013 name (Training/PublicTest/PrivateTest) or role (train/val/test), or ``all``: the
        three together (every image of the data set, for a model that was not trained on it)."""
        if name.lower() == "all":
            return Subset.concat([self.train, self.val, self.test])
        key = {"training": "train", "publictest": "val", "privatetest": "test", "train": "train", "val": "val",
               "validation": "val", "test": "test"}.get(name.lower())
        if key is None:
            raise FerkitError(f"unknown split {name!r}; use Training, PublicTest or PrivateTest (or train/val/test), "
                              "or all")
        return getattr(self, key)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """{split role: {class name: count}}."""
        return {role: _class_counts(getattr(self, role).labels, self.labels) for role in SPLIT_ROLES}


def _class_counts(labels: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(names)) if len(labels) else np.zeros(len(names), int)
    return {n: int(c) for n, c in zip(names, counts)}


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
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


TRAINING_DATA_KEYS = ("data_sha256", "split", "seed")


def training_data_mismatch(a: dict, b: dict) -> str | None:
    """The first of data file sha256, split method and split seed on which two splits' infos differ, or None.

    Two models may share targets or be averaged only when this is None: otherwise one model's training
    images could be the other's validation or test images."""
    for key in TRAINING_DATA_KEYS:
        if a.get(key) != b.get(key):
            return key
    return None


def onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) class ids -> (N, C) float32 one-hot rows (a negative id gives a row of zeros)."""
    out = np.zeros((len(labels), num_classes), np.float32)
    kept = labels >= 0
    out[np.flatnonzero(kept), labels[kept]] = 1.0
    return out


_PROTOCOL_RULES = {
    "plurality": "plurality over classes+unknown+NF; ties, unknown, NF, excluded classes and FER+-dropped images removed",
    "reference": "FER+ authors' rule: single votes removed, then > 50% of the remaining votes for one class; "
                 "unknown, NF, excluded classes and FER+-dropped images removed",
}


def _ferplus_labels(ds: Fer2013, ferplus, label_set: str, mode: str, weight: float = 0.5,
                    protocol: str = "plurality") -> tuple[np.ndarray, np.ndarray, dict]:
    from .ferplus import FERPLUS_MODES, align_ferplus, ferplus_targets, load_ferplus, reason_counts

    if mode not in FERPLUS_MODES:
        raise FerkitError(f"unknown FER+ mode {mode!r}; use one of {', '.join(FERPLUS_MODES)}")
    fp = load_ferplus(ferplus)
    align_ferplus(fp, ds.rows, ds.usage, ds.csv_rows, ds.path)
    labels, soft, reason = ferplus_targets(fp.votes[ds.rows], label_set, dropped=fp.dropped_by_ferplus[ds.rows],
                                           protocol=protocol)
    info = {"path": str(ferplus), "sha256": fp.sha256, "mode": mode, "protocol": protocol,
            "rule": _PROTOCOL_RULES[protocol], "reasons": reason_counts(reason)}
    if mode == "majority":
        soft = onehot(labels, soft.shape[1])
    elif mode == "blend":  # FER2013's own labels stay the labels; FER+ votes only soften the training target
        if not 0 <= weight <= 1:
            raise FerkitError(f"the FER+ blend weight must lie in [0, 1], got {weight}")
        ls = get_label_set(label_set)
        if ls.from_fer7 is None:
            raise FerkitError(f"FER+ blend mode keeps FER2013's labels, so it needs a FER2013 label set "
                              f"(fer7, fer6, fer5), not {label_set!r}")
        labels = ls.map_fer7(ds.labels)
        target = onehot(labels, soft.shape[1])
        has_votes = (reason == 0) & (labels >= 0)
        target[has_votes] = (1 - weight) * target[has_votes] + weight * soft[has_votes]
        soft = target
        info.update({"weight": float(weight), "blended": int(has_votes.sum()),
                     "rule": "target = (1 - weight) * one-hot FER2013 label + weight * FER+ vote distribution, "
                             "where FER+ keeps the image (else the one-hot label); labels and evaluation stay FER2013's"})
    return labels, soft, info


def _folder_labels(fd, label_set: str) -> np.ndarray:
    from .folders import FOLDER_CLASSES

    if label_set == "ferplus8":
        table = np.array([FERPLUS_EMOTIONS.index(c) for c in FOLDER_CLASSES], np.int64)
        return table[fd.labels]
    ls = get_label_set(label_set)
    table = np.array(list(ls.from_fer7) + [-1], np.int64)  # contempt (id 7) is not in the FER2013 sets
    return table[fd.labels]


def prepare_splits(
    data: str | os.PathLike | Fer2013,
    *,
    label_set: str = "fer7",
    split: str = "usage",
    seed: int = 0,
    skip_bad: bool = False,
    limit: int | None = None,
    ferplus: str | os.PathLike | None = None,
    ferplus_mode: str = "majority",
    ferplus_weight: float = 0.5,
    ferplus_protocol: str | None = None,
    clean: str | Iterable[str] | None = None,
    class_map: dict[str, str] | None = None,
) -> Splits:
    """Load a data set and return its train/val/test splits in the chosen label set.

    data: a FER2013 CSV (plain or .gz), an image-folder root (see :mod:`ferkit.data.folders`), or a
      loaded :class:`Fer2013`.
    label_set: ``fer7`` | ``fer6`` | ``fer5`` | ``ferplus8`` (``ferplus8`` needs ``ferplus`` or folders).
    split: ``usage`` (Usage column / split folders) or ``random`` (stratified 80/10/10 with ``seed``).
    skip_bad: skip (and count) malformed CSV rows / unreadable images instead of failing.
    limit: keep only the first ``limit`` rows of each split (quick experiments).
    ferplus: path of FER+'s ``fer2013new.csv``; labels then come from the FER+ votes (joined on row position)
      and ``Subset.soft`` is filled: ``ferplus_mode='soft'`` gives (N, C) vote distributions, ``'majority'``
      the one-hot majority label. Both modes keep the same images (see :mod:`ferkit.data.ferplus`).
      ``'blend'`` keeps FER2013's labels and images (a FER2013 label set) and makes ``Subset.soft`` the
      training target ``(1 - ferplus_weight) * one-hot + ferplus_weight * FER+ votes`` (FER+ as extra
      supervision; evaluation stays on FER2013's labels).
    ferplus_protocol: which images FER+ labels and how (``plurality``, ferkit's default, also when None, or
      ``reference``, the FER+ authors' rule: see :mod:`ferkit.data.ferplus`); it applies to every split.
    clean: cleaning rules, e.g. ``['blank', 'histogram', 'duplicates']`` (see :mod:`ferkit.data.clean`);
      the report lands in ``info['cleaning']``.
    class_map: extra folder-name -> class-name mappings for image folders.
    """
    ls = get_label_set(label_set)
    if split not in ("usage", "random"):
        raise FerkitError(f"unknown split method {split!r}; use 'usage' or 'random'")
    if limit is not None and limit < 1:
        raise FerkitError(f"--limit must be at least 1 (rows per split), got {limit}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FerkitError(f"the split seed must be a whole number >= 0, got {seed!r}")
    soft = None
    names = None
    info: dict[str, Any] = {"data": str(data.path if isinstance(data, Fer2013) else data)}
    split_used = split
    if not isinstance(data, Fer2013) and not os.path.exists(data):
        raise FerkitError(f"no such file or folder: {data}; pass a FER2013 CSV (.csv or .csv.gz) or an image folder")
    if isinstance(data, Fer2013) or not os.path.isdir(data):
        ds = data if isinstance(data, Fer2013) else load_fer2013(data, skip_bad=skip_bad)
        from .clean import parse_rules

        if any(rule == "duplicates" for rule, _ in parse_rules(clean)) and ds.pack and len(ds.pack["splits"]) < len(USAGES):
            raise FerkitError(f"{ds.path} is a pack of {', '.join(ds.pack['splits'])} only; the duplicates rule drops "
                              "Training's copies of validation and test images, so it needs every split to find "
                              "them: pack all three (ferkit data pack without --splits), or clean from the CSV")
        if split == "random" and ds.pack and len(ds.pack["splits"]) < len(USAGES):
            raise FerkitError(f"{ds.path} is a pack of {', '.join(ds.pack['splits'])} only; the random split pools all "
                              "three Usage splits, so pack all of them (ferkit data pack without --splits)")
        if ferplus is not None:
            y, soft, info["ferplus"] = _ferplus_labels(ds, ferplus, ls.name, ferplus_mode, ferplus_weight,
                                                       ferplus_protocol or "plurality")
        elif ls.from_fer7 is None:
            raise FerkitError(f"label set {ls.name!r} needs FER+ votes: pass ferplus=PATH (--ferplus) to fer2013new.csv")
        else:
            y = ls.map_fer7(ds.labels)
        images, rows = ds.images, ds.rows
        keep = y >= 0
        if split == "usage":
            idx = [np.flatnonzero((ds.usage == k) & keep) for k in range(len(USAGES))]
        else:
            kept = np.flatnonzero(keep)
            idx = [kept[i] for i in stratified_split(y[kept], seed=seed)]
        info.update({"data_kind": "fer2013-csv", "data_sha256": ds.sha256, "skipped_rows": len(ds.skipped),
                     "skipped": [f"row {r}: {why}" for r, why in ds.skipped[:20]]})
        if ds.pack:
            info["pack"] = ds.pack
    else:
        if ferplus is not None:
            raise FerkitError("FER+ labels line up with fer2013.csv rows; --ferplus needs the FER2013 CSV, not an image folder")
        from .folders import load_image_folder

        fd = load_image_folder(data, skip_bad=skip_bad, class_map=class_map)
        y = _folder_labels(fd, ls.name)
        images, rows, names = fd.images, np.arange(len(fd), dtype=np.int64), fd.paths
        keep = y >= 0
        if not keep.any():
            from .folders import FOLDER_CLASSES

            found = [FOLDER_CLASSES[c] for c in sorted(set(fd.labels.tolist()))]
            raise FerkitError(f"all {len(fd)} images under {data} are in classes label set {ls.name!r} leaves out "
                              f"({', '.join(found)}); choose another --label-set")
        if split == "usage" and fd.layout == "splits":
            idx = [np.flatnonzero((fd.split == k) & keep) for k in range(3)]
            missing = [k for k in (1, 2) if len(np.flatnonzero(fd.split == k)) == 0]
            if missing:
                fractions = (0.9, 0.1) if len(missing) == 1 else (0.8, 0.1, 0.1)
                parts = stratified_split(y[idx[0]], fractions=fractions, seed=seed)
                pool = idx[0]
                idx[0] = pool[parts[0]]
                for k, part in zip(missing, parts[1:]):
                    idx[k] = pool[part]
                split_used = f"folders (carved {' and '.join(SPLIT_ROLES[k] for k in missing)} from train, seed {seed})"
            else:
                split_used = "folders"
        else:
            if fd.layout == "flat" and split == "usage":
                split_used = "random (flat folder has no split folders)"
            else:
                split_used = "random"
            kept = np.flatnonzero(keep)
            idx = [kept[i] for i in stratified_split(y[kept], seed=seed)]
        info.update({"data_kind": "image-folder", "data_sha256": fd.fingerprint, "layout": fd.layout,
                     "class_folders": fd.class_folders, "skipped_rows": len(fd.bad),
                     "skipped": [f"{p}: {why}" for p, why in fd.bad[:20]], "ignored_files": len(fd.ignored)})
    if clean:
        from .clean import clean_arrays

        all_idx = np.concatenate(idx)
        split_of = np.concatenate([np.full(len(i), k, np.int8) for k, i in enumerate(idx)])
        alive, info["cleaning"] = clean_arrays(
            images[all_idx], y[all_idx], split_of, rows[all_idx], clean, class_names=ls.labels,
            names=None if names is None else [names[i] for i in all_idx],
        )
        idx = [all_idx[(split_of == k) & alive] for k in range(len(idx))]
    if limit is not None:
        if names is not None:  # image folders list class by class: a seeded sample, not the first class only
            rng = np.random.default_rng(seed)
            idx = [np.sort(rng.permutation(i)[:limit]) for i in idx]
        else:
            idx = [i[:limit] for i in idx]
    subsets = [Subset(images[i], y[i], rows[i], None if soft is None else soft[i]) for i in idx]
    info.update({
        "label_set": ls.name, "split": split, "split_used": split_used, "seed": seed, "limit": limit,
        "dropped_by_label_set": int((~keep).sum()),
        "sizes": {n: len(s) for n, s in zip(SPLIT_ROLES, subsets)},
        "class_counts": {n: _class_counts(s.labels, ls.labels) for n, s in zip(SPLIT_ROLES, subsets)},
    })
    return Splits(*subsets, labels=ls.labels, label_set=ls.name, info=info)

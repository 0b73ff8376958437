"""Knowledge distillation from exported teachers (one model, an ensemble ``.onnx``, or several), offline.

The teachers' probabilities on every Training image are computed once, before training, through the
same runtime users have (with each teacher's default test-time augmentation), and become part of the
training target: ``(1 - weight) x target + weight x teacher probabilities``, where ``target`` is the
one-hot label (or the FER+ target when FER+ supervision is on). With several teachers, the teacher
probabilities are their mean. The student then trains on these soft targets with the usual
cross-entropy, augmentations included (Hinton et al. 2015). A temperature T reshapes each teacher's
probabilities before they are averaged: ``p ** (1 / T)``, renormalised, which is the softmax of its logits
divided by T (T > 1 softer, T < 1 sharper); the student still learns at temperature 1.

A teacher may predict classes the student's label set leaves out (e.g. FER+'s contempt for a ``fer7``
student): their probability is dropped and the rest renormalised, the same as the student's own
evaluation would treat a face of that class. A teacher whose classes the student merges (``fer6``
folds disgust into angry) or lacks is refused.

Every teacher must have been trained on the same data file with the same split: a teacher that has
seen the student's validation or test images would leak them into the student through its targets.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np

from .errors import FerkitError


def teacher_list(teacher) -> list[str]:
    """``teacher`` as a list of model names/paths (one str or path, or a sequence of them)."""
    if teacher is None:
        return []
    if isinstance(teacher, (str, os.PathLike)):
        return [str(teacher)]
    return [str(t) for t in teacher]


def _columns(teacher, teacher_labels: Sequence[str], student_labels: Sequence[str], label_set: str | None):
    """Indices of the student's classes among the teacher's, and the teacher classes dropped.

    Raises when the teacher lacks one of the student's classes, or predicts one that the student's label
    set merges into another class (its probability would belong to that class, not be dropped)."""
    from .labels import EMOTIONS, get_label_set

    teacher_labels, student_labels = list(teacher_labels), list(student_labels)
    if teacher_labels == student_labels:
        return list(range(len(student_labels))), []
    mismatch = FerkitError(f"the teacher {teacher} predicts {teacher_labels}, the student {student_labels}")
    if not set(student_labels) <= set(teacher_labels):
        raise mismatch
    extra = [c for c in teacher_labels if c not in student_labels]
    table = None
    if label_set:
        try:
            table = get_label_set(label_set).from_fer7
        except FerkitError:
            table = None
    for c in extra:
        # a FER2013 class the student's set maps onto another class is merged, not dropped
        if c in EMOTIONS and (table is None or table[EMOTIONS.index(c)] != -1):
            raise mismatch
    return [teacher_labels.index(c) for c in student_labels], extra


def _check_temperature(temperature: float) -> None:
    if not 0 < temperature < float("inf"):  # also refuses nan
        raise FerkitError(f"the teacher temperature must be a number > 0, got {temperature}")


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of probabilities at another temperature: ``p ** (1 / T)`` renormalised (= softmax(logits / T)).

    Computed in log space, so a class the teacher gives (almost) no probability stays near 0 rather than
    overflowing at a small T."""
    _check_temperature(temperature)
    if temperature == 1:
        return np.asarray(probs, np.float32)
    logits = np.log(np.maximum(np.asarray(probs, np.float64), 1e-30)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def _student_columns(raw: np.ndarray, cols: list[int], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """A teacher's probabilities (N, C_teacher) on the student's classes: the columns ``cols``, renormalised,
    at ``temperature``. Also returns the probability mass kept per row (N, 1)."""
    probs = raw[:, cols]
    kept = probs.sum(1, keepdims=True)
    return with_temperature(probs / np.maximum(kept, 1e-12), temperature), kept


def distill_targets(teacher, images: np.ndarray, labels: np.ndarray, label_names, data_info: dict, weight: float,
                    *, base: np.ndarray | None = None, threads: int | None = None,
                    temperature: float = 1.0) -> tuple[np.ndarray, dict[str, Any]]:
    """The distillation targets (N, C) float32 for ``images`` (uint8 (N, 48, 48) Training faces).

    teacher: an exported ``.onnx`` or a bundled model name, or a list of them (their probabilities are
    averaged). labels: the images' class ids. label_names: the student's labels, in order (each teacher
    must predict them, and may predict classes the student's label set excludes). data_info: the
    student's ``Splits.info`` (its data_sha256, split and seed must match each teacher's training data).
    base: the target before distillation (default: one-hot ``labels``). temperature: applied to each
    teacher's probabilities (after dropping the classes the student leaves out), see :func:`with_temperature`.
    Returns the targets and a JSON-ready record of the teacher(s) (the name given, its path, sha256, tta,
    weight, accuracy on these images); with several teachers, ``teachers`` holds one record each and ``sha256`` is the
    sha256 of their sha256s.
    """
    from .data.fer2013 import file_sha256
    from .data.splits import onehot, training_data_mismatch
    from .runtime import EmotionClassifier

    names = teacher_list(teacher)
    if not names:
        raise FerkitError("no teacher given")
    if not 0 <= weight <= 1:
        raise FerkitError(f"the teacher weight must lie in [0, 1], got {weight}")
    _check_temperature(temperature)  # before the teachers run
    labels = np.asarray(labels, np.int64)
    n, c = len(labels), len(label_names)
    base = onehot(labels, c) if base is None else np.asarray(base, np.float32)
    if base.shape != (n, c):
        raise FerkitError(f"base targets of shape {base.shape}, expected {(n, c)}")
    records, all_probs = [], []
    for name in names:
        clf = EmotionClassifier(name, threads=threads)
        cols, dropped = _columns(name, clf.labels, label_names, data_info.get("label_set"))
        tdata = (clf.metadata.get("provenance") or {}).get("data") or {}
        if not tdata.get("data_sha256"):
            raise FerkitError(f"the teacher {name} does not record the data it was trained on, so it may have "
                              "seen the student's validation or test images; use a teacher exported by ferkit")
        key = training_data_mismatch(tdata, data_info)
        if key is not None:
            raise FerkitError(
                f"the teacher {name} was trained with {key} {tdata.get(key)!r}, the student uses {data_info.get(key)!r}: "
                "the teacher must be trained on the same data file and split, or its targets leak the "
                "student's validation/test images")
        raw = clf.predict_proba(images)
        probs, kept = _student_columns(raw, cols, temperature)
        rec = {"teacher": str(name), "path": str(clf.path), "sha256": file_sha256(clf.path), "arch": clf.metadata.get("arch"),
               "tta": clf.tta, "teacher_train_acc": float((probs.argmax(1) == labels).mean())}
        if dropped:
            rec["dropped_classes"] = dropped
            rec["dropped_mass"] = float(1 - kept.mean())
        records.append(rec)
        all_probs.append(probs)
    probs = np.mean(all_probs, axis=0) if len(all_probs) > 1 else all_probs[0]
    targets = ((1 - weight) * base + weight * probs).astype(np.float32)
    rule = "target = (1 - weight) * target + weight * teacher probabilities (the teacher's default TTA)"
    if temperature != 1:
        rule += f"; each teacher's probabilities at temperature {temperature:g} (p ** (1 / T), renormalised)"
    if any(r.get("dropped_classes") for r in records):
        rule += "; classes the student leaves out are dropped from a teacher's probabilities, the rest renormalised"
    if len(records) == 1:
        info = {**records[0], "weight": float(weight), "temperature": float(temperature), "rule": rule}
    else:
        info = {"teacher": " + ".join(r["teacher"] for r in records),
                "sha256": hashlib.sha256("\n".join(r["sha256"] for r in records).encode()).hexdigest(),
                "arch": " + ".join(str(r["arch"]) for r in records), "tta": " + ".join(str(r["tta"]) for r in records),
                "weight": float(weight), "temperature": float(temperature), "teacher_train_acc": float((probs.argmax(1) == labels).mean()),
                "teachers": records,
                "rule": rule.replace("teacher probabilities", "the mean of the teachers' probabilities")}
    return targets, info


class ConsistentTeacher:
    """The teachers' probabilities on the very batch the student sees, augmentations included ("consistent
    teaching", Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and consistent"), as
    opposed to :func:`distill_targets`, which asks them once about each clean Training image.

    Called with the student's preprocessed, augmented batch ``x`` (float (N, 1, S, S), normalised with the
    student's ``spec``); returns the mean of the teachers' probabilities on the student's classes (N, C),
    float32 on ``x``'s device: each teacher's default TTA and calibration temperature, classes the student
    leaves out dropped and the rest renormalised, then ``temperature`` -- the same per-teacher steps as
    :func:`distill_targets`, so on un-augmented images both give the same probabilities. A teacher whose
    preprocessing differs from the student's in more than the normalisation's mean and std is refused: its
    input cannot be derived from the student's batch. Check the teachers' training data with
    :func:`distill_targets` first (train() does).
    """

    def __init__(self, teacher, label_names, student_spec, *, label_set: str | None = None,
                 temperature: float = 1.0, threads: int | None = None):
        from .runtime import EmotionClassifier

        _check_temperature(temperature)
        self.temperature = float(temperature)
        self._parts = []
        for name in teacher_list(teacher):
            clf = EmotionClassifier(name, threads=threads)
            cols, _ = _columns(name, clf.labels, label_names, label_set)
            ts = clf.spec
            if (ts.size, ts.equalize, ts.gamma, ts.blur_sigma) != \
                    (student_spec.size, student_spec.equalize, student_spec.gamma, student_spec.blur_sigma):
                raise FerkitError(f"the teacher {name} preprocesses faces as {ts}, the student as {student_spec}: "
                                  "consistent teaching feeds the student's augmented batch to the teacher, so only "
                                  "the normalisation's mean and std may differ")
            # the student's x = (pixel - mean_s) / std_s; the teacher's = (pixel - mean_t) / std_t
            scale, shift = student_spec.std / ts.std, (student_spec.mean - ts.mean) / ts.std
            self._parts.append((clf, cols, np.float32(scale), np.float32(shift)))
        if not self._parts:
            raise FerkitError("no teacher given")

    def __call__(self, x):
        import torch

        xs = x.detach().float().cpu().numpy()
        out = []
        for clf, cols, scale, shift in self._parts:
            xt = xs if (scale, shift) == (1, 0) else xs * scale + shift
            out.append(_student_columns(clf.predict_proba_prepared(xt), cols, self.temperature)[0])
        probs = np.mean(out, axis=0) if len(out) > 1 else out[0]
        return torch.from_numpy(np.ascontiguousarray(probs, np.float32)).to(x.device)

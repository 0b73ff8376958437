"""Knowledge distillation from an exported teacher (one model or an ensemble ``.onnx``), offline.

The teacher's probabilities on every Training image are computed once, before training, through the
same runtime users have (with the teacher's default test-time augmentation), and become part of the
training target: ``(1 - weight) x target + weight x teacher probabilities``, where ``target`` is the
one-hot label (or the FER+ target when FER+ supervision is on). The student then trains on these soft
targets with the usual cross-entropy, augmentations included (Hinton et al. 2015 at temperature 1).

The teacher must have been trained on the same data file with the same split: a teacher that has seen
the student's validation or test images would leak them into the student through its targets.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FerkitError


def distill_targets(teacher, images: np.ndarray, labels: np.ndarray, label_names, data_info: dict, weight: float,
                    *, base: np.ndarray | None = None, threads: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The distillation targets (N, C) float32 for ``images`` (uint8 (N, 48, 48) Training faces).

    teacher: an exported ``.onnx`` or a bundled model name. labels: the images' class ids.
    label_names: the student's labels, in order (the teacher must predict the same). data_info: the
    student's ``Splits.info`` (its data_sha256, split and seed must match the teacher's training data).
    base: the target before distillation (default: one-hot ``labels``).
    Returns the targets and a JSON-ready record of the teacher (path, sha256, tta, weight, its accuracy
    on these images).
    """
    from .data.fer2013 import file_sha256
    from .data.splits import onehot, training_data_mismatch
    from .runtime import EmotionClassifier

    if not 0 <= weight <= 1:
        raise FerkitError(f"the teacher weight must lie in [0, 1], got {weight}")
    clf = EmotionClassifier(teacher, threads=threads)
    if tuple(clf.labels) != tuple(label_names):
        raise FerkitError(f"the teacher {teacher} predicts {list(clf.labels)}, the student {list(label_names)}")
    tdata = (clf.metadata.get("provenance") or {}).get("data") or {}
    if not tdata.get("data_sha256"):
        raise FerkitError(f"the teacher {teacher} does not record the data it was trained on, so it may have "
                          "seen the student's validation or test images; use a teacher exported by ferkit")
    key = training_data_mismatch(tdata, data_info)
    if key is not None:
        raise FerkitError(
            f"the teacher {teacher} was trained with {key} {tdata.get(key)!r}, the student uses {data_info.get(key)!r}: "
            "the teacher must be trained on the same data file and split, or its targets leak the "
            "student's validation/test images")
    labels = np.asarray(labels, np.int64)
    n, c = len(labels), len(label_names)
    base = onehot(labels, c) if base is None else np.asarray(base, np.float32)
    if base.shape != (n, c):
        raise FerkitError(f"base targets of shape {base.shape}, expected {(n, c)}")
    probs = clf.predict_proba(images)
    targets = ((1 - weight) * base + weight * probs).astype(np.float32)
    info = {"teacher": str(clf.path), "sha256": file_sha256(clf.path), "arch": clf.metadata.get("arch"), "tta": clf.tta,
            "weight": float(weight), "teacher_train_acc": float((probs.argmax(1) == labels).mean()),
            "rule": "target = (1 - weight) * target + weight * teacher probabilities (the teacher's default TTA)"}
    return targets, info

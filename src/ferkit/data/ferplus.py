"""FER+ labels (Microsoft's ``fer2013new.csv``): 10 annotators' votes for every FER2013 image.

Columns: ``Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``.
Row ``i`` of ``fer2013new.csv`` describes row ``i`` of ``fer2013.csv``: the two files are joined on
ROW POSITION, never on ``Image name`` (the names drift away from the row index and four of them occur
twice). An empty ``Image name`` marks an image that FER+ dropped (mostly not faces).

Label rule (``ferplus_targets``), documented because FER+ papers differ here:

* The votes of the 8 emotions are summed into the classes of the chosen label set (``ferplus8``: one
  to one; ``fer7``/``fer6``/``fer5``: FER+ names mapped onto FER2013 classes, merged classes summed;
  an emotion the set lacks, e.g. contempt in ``fer7``, stays a separate "excluded" candidate).
* Candidates are those classes plus the excluded emotions plus ``unknown`` and ``NF`` (not a face).
  The image's label is the candidate with the most votes (plurality).
* The image is DROPPED when: FER+ dropped it (empty image name); the top vote count is shared by two
  or more candidates (a tie: no clear majority, we do not break ties arbitrarily); the top candidate is
  ``unknown``, ``NF`` or an excluded emotion; or it has no votes.
* Soft target of a kept image: its class votes divided by their sum (a distribution over the set's
  classes; votes for unknown/NF/excluded emotions are not part of it).

That is the ``plurality`` protocol, ferkit's default. ``protocol="reference"`` follows the FER+ authors'
released code (microsoft/FERPlus ``src/ferplus.py``, the ``majority`` mode it uses for validation and test):

* every count of a single vote is set to 0 first (their "outlier removal"), for all 10 columns;
* the top candidate must hold MORE than half of the remaining votes (unknown and NF votes count in that
  total), else the image is dropped (``no_majority``); it must also not be unknown, NF or excluded;
* the soft target is the remaining class votes divided by their sum.

The reference protocol keeps fewer, less ambiguous images (about 3,150 of 3,589 in each test split against
about 3,380 with plurality), so its accuracies are higher; results must name the protocol.

``prepare_splits(..., ferplus=PATH)`` keeps the same images in ``majority`` and ``soft`` mode, so the
validation and test sets (and their hard labels) are identical and accuracies are comparable across
modes; only the training target differs (``Subset.soft`` is the vote distribution in soft mode and the
one-hot majority label in majority mode).

``blend`` mode (FER+ as extra supervision for a FER2013 model) keeps FER2013's own images and labels, so
validation and test are the standard FER2013 ones; only the training target becomes
``(1 - w) * one-hot(FER2013 label) + w * FER+ vote distribution`` for images FER+ keeps (the others keep
their one-hot label).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FerkitError
from ..labels import EMOTIONS, FERPLUS_EMOTIONS, get_label_set
from .fer2013 import USAGES, file_sha256

FERPLUS_HEADER: tuple[str, ...] = (
    "Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
    "contempt", "unknown", "NF",
)
VOTE_COLUMNS: tuple[str, ...] = FERPLUS_HEADER[2:]  # 8 emotions, unknown, NF
UNKNOWN, NOT_FACE = 8, 9  # vote-column indices
FERPLUS_MODES: tuple[str, ...] = ("majority", "soft", "blend")
FERPLUS_PROTOCOLS: tuple[str, ...] = ("plurality", "reference")

# why an image has no FER+ label (codes used in reports)
DROP_REASONS: tuple[str, ...] = ("kept", "no_image", "tie", "unknown", "not_face", "excluded_class", "no_votes",
                                "no_majority")


@dataclass
class FerPlus:
    """Parsed ``fer2013new.csv``.

    votes: int16 (N, 10) in file column order (neutral, happiness, surprise, sadness, anger, disgust,
    fear, contempt, unknown, NF); usage: int8 index into ``USAGES`` (N,); image_names: list of N str
    ('' where FER+ dropped the image). Row ``i`` belongs to data row ``i`` of ``fer2013.csv``.
    """

    votes: np.ndarray
    usage: np.ndarray
    image_names: list[str]
    path: str
    sha256: str

    def __len__(self) -> int:
        return len(self.usage)

    @property
    def dropped_by_ferplus(self) -> np.ndarray:
        """Bool (N,): rows with an empty image name (FER+ dropped them)."""
        return np.array([not n for n in self.image_names], dtype=bool)


def load_ferplus(path: str | os.PathLike) -> FerPlus:
    """Read ``fer2013new.csv`` (or the copy a ferkit pack carries); a wrong header or malformed row is a
    :class:`FerkitError` naming the row."""
    from .pack import is_pack, pack_ferplus_bytes

    p = Path(path)
    if not p.is_file():
        raise FerkitError(f"no such file: {p}; pass the path of FER+'s fer2013new.csv")
    if is_pack(p):  # a ferkit pack that carries fer2013new.csv verbatim
        raw, digest = pack_ferplus_bytes(p)
        return _parse_ferplus(raw, p, digest)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise FerkitError(f"cannot read {p}: {e}") from None
    return _parse_ferplus(raw, p, file_sha256(p))


def _parse_ferplus(raw: bytes, p: Path, digest: str) -> FerPlus:
    if b"\x00" in raw[:4096] or raw[:2] == b"\x1f\x8b":
        raise FerkitError(f"{p} is not a plain CSV text file; expected FER+'s fer2013new.csv")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FerkitError(f"{p} is not UTF-8 text; expected FER+'s fer2013new.csv") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != list(FERPLUS_HEADER):
        shown = ",".join(header or [])[:120]
        raise FerkitError(f"{p}: header is {shown!r}; expected {','.join(FERPLUS_HEADER)!r} (FER+'s fer2013new.csv)")
    usage_code = {u: i for i, u in enumerate(USAGES)}
    votes: list[list[int]] = []
    usage: list[int] = []
    names: list[str] = []
    for k, fields in enumerate(reader):
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        where = f"{p}: data row {len(usage)} (line {reader.line_num})"
        if len(fields) != len(FERPLUS_HEADER):
            raise FerkitError(f"{where}: expected {len(FERPLUS_HEADER)} fields, found {len(fields)}")
        u = fields[0].strip()
        if u not in usage_code:
            raise FerkitError(f"{where}: Usage {u[:30]!r} is not one of {', '.join(USAGES)}")
        try:
            v = [int(x) for x in fields[2:]]
        except ValueError:
            raise FerkitError(f"{where}: vote counts must be integers, got {fields[2:]}") from None
        if min(v) < 0 or max(v) > 1000:
            raise FerkitError(f"{where}: vote counts must be in 0..1000, got {v}")
        usage.append(usage_code[u])
        names.append(fields[1].strip())
        votes.append(v)
    if not usage:
        raise FerkitError(f"{p}: no data rows")
    return FerPlus(np.asarray(votes, np.int16), np.asarray(usage, np.int8), names, str(p), digest)


def _class_of_ferplus_emotion(label_set: str) -> np.ndarray:
    """For each of the 8 FER+ emotion columns, its class id in ``label_set`` or -1 (not in the set)."""
    if label_set == "ferplus8":
        return np.arange(8)
    ls = get_label_set(label_set)
    out = []
    for name in FERPLUS_EMOTIONS:
        out.append(ls.from_fer7[EMOTIONS.index(name)] if name in EMOTIONS else -1)
    return np.asarray(out)


def ferplus_targets(votes: np.ndarray, label_set: str = "ferplus8", dropped: np.ndarray | None = None,
                    protocol: str = "plurality") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FER+ votes (N, 10) -> (labels int64 (N,), soft float32 (N, C), reason int8 (N,)).

    ``labels`` is the winning class in ``label_set`` or -1 when the image is dropped; ``reason``
    indexes ``DROP_REASONS`` (0 = kept); ``soft`` is the vote distribution over the set's classes
    (rows of dropped images are zeros). ``dropped`` marks images FER+ itself dropped (empty name).
    ``protocol``: ``plurality`` (default) or ``reference`` (the FER+ authors' rule). See the module
    docstring for the exact rules.
    """
    if protocol not in FERPLUS_PROTOCOLS:
        raise FerkitError(f"unknown FER+ protocol {protocol!r}; use one of {', '.join(FERPLUS_PROTOCOLS)}")
    votes = np.asarray(votes, dtype=np.int64)
    if votes.ndim != 2 or votes.shape[1] != 10:
        raise FerkitError(f"FER+ votes must have shape (N, 10), got {votes.shape}")
    if protocol == "reference":
        votes = np.where(votes <= 1, 0, votes)  # single votes are outliers in the authors' code
    ls = get_label_set(label_set)
    C = ls.num_classes
    cls = _class_of_ferplus_emotion(label_set)
    n = len(votes)
    class_votes = np.zeros((n, C), np.int64)
    for j, c in enumerate(cls):
        if c >= 0:
            class_votes[:, c] += votes[:, j]
    excluded = votes[:, :8][:, cls < 0]  # emotions the set lacks: separate candidates
    candidates = np.concatenate([class_votes, excluded, votes[:, UNKNOWN:NOT_FACE + 1]], axis=1)
    top = candidates.max(axis=1)
    n_top = (candidates == top[:, None]).sum(axis=1)
    winner = candidates.argmax(axis=1)
    n_excl = excluded.shape[1]
    reason = np.zeros(n, np.int8)
    reason[winner >= C] = DROP_REASONS.index("excluded_class")
    reason[winner == C + n_excl] = DROP_REASONS.index("unknown")
    reason[winner == C + n_excl + 1] = DROP_REASONS.index("not_face")
    reason[n_top > 1] = DROP_REASONS.index("tie")
    if protocol == "reference":
        reason[2 * top <= candidates.sum(axis=1)] = DROP_REASONS.index("no_majority")
    reason[top == 0] = DROP_REASONS.index("no_votes")
    if dropped is not None:
        reason[np.asarray(dropped, bool)] = DROP_REASONS.index("no_image")
    labels = np.where(reason == 0, winner, -1).astype(np.int64)
    soft = np.zeros((n, C), np.float32)
    keep = reason == 0
    soft[keep] = class_votes[keep] / class_votes[keep].sum(axis=1, keepdims=True)
    return labels, soft, reason


def align_ferplus(fp: FerPlus, rows: np.ndarray, usage: np.ndarray, n_csv_rows: int, csv_path: str = "fer2013.csv") -> None:
    """Check that FER+ lines up with the FER2013 rows ``rows`` (positions in the CSV) and their ``usage``.

    Raises :class:`FerkitError` when the row counts differ or any Usage disagrees: then the files do not
    describe the same images in the same order, and joining them would silently mislabel images.
    """
    if len(fp) != n_csv_rows:
        raise FerkitError(f"{fp.path} has {len(fp)} data rows but {csv_path} has {n_csv_rows}: FER+ labels are joined "
                          "on row position, so both must be the complete original files (35,887 rows)")
    mism = np.flatnonzero(fp.usage[rows] != usage)
    if len(mism):
        r = int(rows[mism[0]])
        raise FerkitError(f"{fp.path} does not line up with {csv_path}: Usage differs on {len(mism)} rows (first: data row "
                          f"{r}: {USAGES[int(fp.usage[r])]} vs {USAGES[int(usage[mism[0]])]}); are they the original files "
                          "in their original row order?")


def reason_counts(reason: np.ndarray) -> dict[str, int]:
    """Count of each ``DROP_REASONS`` code in ``reason``."""
    counts = np.bincount(np.asarray(reason, np.int64), minlength=len(DROP_REASONS))
    return {name: int(c) for name, c in zip(DROP_REASONS, counts)}

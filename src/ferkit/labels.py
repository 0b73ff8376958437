"""Label sets and the mappings between them.

FER2013 ids: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral.
FER+ vote columns (fer2013new.csv): neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
then unknown and NF (not a face).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FerkitError

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: one colour per emotion (BGR) for boxes and tags, shared by ferkit.pipeline's drawing, the server's
#: overlay and the web page (static/app.css uses the same colours)
EMOTION_COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "angry": (77, 72, 229),
    "disgust": (108, 164, 48),
    "fear": (198, 78, 142),
    "happy": (36, 165, 245),
    "sad": (221, 99, 62),
    "surprise": (148, 165, 18),
    "neutral": (152, 141, 139),
    "contempt": (88, 127, 173),
}

# The FER+ 8-class set, in the column order of fer2013new.csv, with ferkit's names.
FERPLUS_EMOTIONS: tuple[str, ...] = (
    "neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt",
)


@dataclass(frozen=True)
class LabelSet:
    """A named label set and how FER2013's 7 ids map into it.

    ``from_fer7[i]`` is the index in this set of FER2013 class ``i``, or -1 when the class is dropped.
    ``from_fer7`` is None for sets that FER2013 labels cannot express (FER+ 8).
    """

    name: str
    labels: tuple[str, ...]
    from_fer7: tuple[int, ...] | None
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def map_fer7(self, y: np.ndarray) -> np.ndarray:
        """Map FER2013 ids (0..6) to this set's ids; dropped classes become -1."""
        if self.from_fer7 is None:
            raise FerkitError(f"label set {self.name!r} cannot be derived from FER2013 labels; use FER+ labels")
        table = np.asarray(self.from_fer7, dtype=np.int64)
        return table[np.asarray(y, dtype=np.int64)]


LABEL_SETS: dict[str, LabelSet] = {
    "fer7": LabelSet("fer7", EMOTIONS, (0, 1, 2, 3, 4, 5, 6), "the 7 FER2013 classes"),
    "fer6": LabelSet(
        "fer6", ("angry", "fear", "happy", "sad", "surprise", "neutral"), (0, 0, 1, 2, 3, 4, 5),
        "FER2013 with angry and disgust merged into angry",
    ),
    "fer5": LabelSet(
        "fer5", ("angry", "happy", "sad", "surprise", "neutral"), (0, -1, -1, 1, 2, 3, 4),
        "FER2013 without disgust and fear (rows of those classes dropped)",
    ),
    "ferplus8": LabelSet("ferplus8", FERPLUS_EMOTIONS, None, "the 8 FER+ classes (needs fer2013new.csv)"),
}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise FerkitError(f"unknown label set {name!r}; choose one of {', '.join(LABEL_SETS)}") from None

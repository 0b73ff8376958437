"""OpenCV's frontal-face Haar cascade (Viola-Jones), the detector the FER source projects used.

Ships with ``opencv-python(-headless) < 5`` under ``cv2.data.haarcascades``. It has no probability: the
score of a face is derived from how many overlapping raw windows voted for it (OpenCV's "neighbours"
count n), as ``n / (n + 3)``; the default threshold 0.5 thus means at least 3 neighbours, and 0.625 means
5 neighbours, the value most source projects passed as ``minNeighbors``.
"""
from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from ..errors import FerkitError
from . import Detection
from .align import CropSpec

CASCADE = "haarcascade_frontalface_default.xml"


def _cascade_path() -> str:
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not base or not os.path.isfile(os.path.join(base, CASCADE)):
        raise FerkitError(
            "OpenCV's Haar cascades were not found (cv2.data.haarcascades); install opencv-python-headless<5, "
            "or use --detector yunet"
        )
    return os.path.join(base, CASCADE)


class HaarDetector:
    """Haar cascade on a gray uint8 image. ``detect(image, confidence)`` -> list of Detection."""

    name = "haar"
    wants = "gray"
    default_confidence = 0.5
    #: border for detection; measured on faces-dev (benchmarks/eval_faces_dev.py)
    default_pad = 0.25
    #: crop framing (ferkit.faces.align): FER2013 faces are framed 1.03 x the Haar box, centred
    #: (median over 1,000 FER2013 training faces; `benchmarks/eval_faces_dev.py --framing`)
    default_crop = CropSpec(scale=1.03)

    def __init__(self, scale_factor: float = 1.1, min_window: int = 24) -> None:
        self._cascade = cv2.CascadeClassifier(_cascade_path())
        if self._cascade.empty():
            raise FerkitError(f"OpenCV could not load the Haar cascade {_cascade_path()}")
        self.scale_factor = scale_factor
        self.min_window = min_window
        # OpenCV's cascade keeps per-call state in the object: two threads in detectMultiScale at once give
        # wrong boxes (measured: 172 of 180 calls through ferkit.analyze from 6 threads), so calls are serialised
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, confidence: float) -> list[Detection]:
        if image.ndim != 2:
            raise FerkitError(f"the Haar detector needs a gray (H, W) image, got shape {image.shape}")
        # n / (n + 3) >= c  <=>  n >= 3c / (1 - c)
        min_neighbors = 1 if confidence <= 0.25 else int(np.ceil(3 * confidence / max(1e-6, 1 - confidence) - 1e-9))
        with self._lock:
            boxes, neighbours = self._cascade.detectMultiScale2(
                image,
                scaleFactor=self.scale_factor,
                minNeighbors=max(1, min_neighbors),
                minSize=(self.min_window, self.min_window),
            )
        out = []
        for (x, y, w, h), n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).reshape(-1)):
            score = float(n) / (float(n) + 3.0)
            if score >= confidence:
                out.append(Detection(box=(int(x), int(y), int(w), int(h)), score=score, landmarks=None))
        return out

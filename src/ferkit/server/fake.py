"""A stand-in analyzer for tests, demos and load tests of the server without a trained model.

``ferkit serve --analyzer ferkit.server.fake:BlobAnalyzer`` treats every saturated magenta blob
(R > 160, G < 110, B > 160; at least 12 x 12 pixels) as a "face". The emotion is a function of the blob's
width, so tests can choose it: ``EMOTIONS[(w // 16) % 7]`` (a 64-pixel square is 'sad', 48 is 'happy').
``FERKIT_FAKE_DELAY_MS`` adds a sleep per call (to test slow requests and crashes mid-request).
"""
from __future__ import annotations

import os
import time

import cv2
import numpy as np

from ..labels import EMOTIONS


def fake_emotion_for_width(width: int) -> str:
    return EMOTIONS[(int(width) // 16) % len(EMOTIONS)]


class BlobAnalyzer:
    """Finds magenta blobs; returns dict faces (box (x, y, w, h) pixels, emotion, score, probabilities)."""

    model_name = "fake-blob"
    thread_safe = True

    def __init__(self, delay_ms: float | None = None):
        if delay_ms is None:
            delay_ms = float(os.environ.get("FERKIT_FAKE_DELAY_MS", "0") or 0)
        self.delay_s = delay_ms / 1000.0

    def analyze(self, image_bgr: np.ndarray) -> list[dict]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        img = np.asarray(image_bgr)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        b = img[:, :, 0].astype(np.int16)
        g = img[:, :, 1].astype(np.int16)
        r = img[:, :, 2].astype(np.int16)
        mask = ((r > 160) & (b > 160) & (g < 110)).astype(np.uint8)
        n, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        faces = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if w < 12 or h < 12 or area < 0.5 * w * h:
                continue
            emotion = fake_emotion_for_width(w)
            rest = 0.4 / (len(EMOTIONS) - 1)
            probs = {label: (0.6 if label == emotion else rest) for label in EMOTIONS}
            faces.append({"box": (x, y, w, h), "emotion": emotion, "score": 0.6, "probabilities": probs})
        faces.sort(key=lambda f: (f["box"][1], f["box"][0]))
        return faces

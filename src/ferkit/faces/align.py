"""Cropping a detected face the way FER2013 faces are framed, with optional eye-level alignment.

FER2013's 48x48 faces are square crops showing the face from about the hairline to just under the chin
with a little background at the sides. A detector's box frames a face its own way (YuNet's box is taller
than wide and reaches the chin; Haar's is a square from the brows to the mouth), so each detector has its
own :class:`CropSpec`, chosen by measurement (``benchmarks/eval_faces_dev.py --framing`` estimates where
each detector's box sits inside FER2013 faces; ``--sweep-crop`` scores settings with the classifier on
faces-dev).

A crop is a square of side ``scale * sqrt(w * h)`` pixels (w, h: the detector box), centred on the box
centre moved by ``(shift_x, shift_y)`` times that reference size (positive shift_y moves the crop down,
towards the chin). With ``align=True`` and landmarks, the square is rotated about its centre so that the
eyes are level. Parts of the square outside the image are filled by replicating the edge pixels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import cv2
import numpy as np

from ..errors import FerkitError
from . import Detection


@dataclass(frozen=True)
class CropSpec:
    """How to cut a face crop out of the image around a detection box (see the module docstring).

    scale:   crop side / sqrt(box w * box h). 1.0 = the box itself (as a square); 1.2 = 10 % margin each side.
    shift_x: horizontal move of the crop centre, in units of sqrt(w * h) (positive: right).
    shift_y: vertical move of the crop centre, in units of sqrt(w * h) (positive: down).
    align:   rotate so the eyes are level, when the detection has landmarks.
    """

    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    align: bool = False

    def __post_init__(self):
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise FerkitError(f"crop scale must be a positive number, got {self.scale}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **kw) -> "CropSpec":
        return replace(self, **kw)


def eye_angle(landmarks) -> float:
    """Angle in degrees of the line from the image-left eye to the image-right eye (0 = level;
    positive when the right-hand eye is lower in the image, y pointing down)."""
    (x1, y1), (x2, y2) = landmarks[0], landmarks[1]
    return math.degrees(math.atan2(y2 - y1, x2 - x1))


def crop_geometry(det: Detection, spec: CropSpec) -> tuple[float, float, float, float]:
    """(centre x, centre y, side, rotation in degrees) of the crop square in image pixels."""
    x, y, w, h = det.box
    ref = math.sqrt(max(1.0, float(w)) * max(1.0, float(h)))
    cx = x + w / 2.0 + spec.shift_x * ref
    cy = y + h / 2.0 + spec.shift_y * ref
    side = max(2.0, spec.scale * ref)
    angle = 0.0
    if spec.align and det.landmarks is not None and len(det.landmarks) >= 2:
        angle = eye_angle(det.landmarks)
        if abs(angle) > 45:  # a landmark swap or a face on its side: do not trust it
            angle = 0.0
    return cx, cy, side, angle


def _region(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """The square [x0, x0+size) x [y0, y0+size) of ``image``, edge pixels replicated outside it."""
    h, w = image.shape[:2]
    x1, y1 = x0 + size, y0 + size
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return image[y0:y1, x0:x1]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx0 >= cx1 or cy0 >= cy1:  # entirely outside: nearest edge pixel everywhere
        px = min(max(x0, 0), w - 1)
        py = min(max(y0, 0), h - 1)
        return np.full((size, size) + image.shape[2:], image[py, px], dtype=image.dtype)
    inner = image[cy0:cy1, cx0:cx1]
    return cv2.copyMakeBorder(inner, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, cv2.BORDER_REPLICATE)


def crop_face(image: np.ndarray, det: Detection, spec: CropSpec = CropSpec()) -> np.ndarray:
    """The square face crop for ``det`` (see :class:`CropSpec`), at the image's own resolution.

    ``image`` is gray (H, W) or colour (H, W, C) uint8; the crop has the same channels. The classifier's
    preprocessing (``ferkit.preprocess.prepare_faces``) resizes it to the network input.
    """
    cx, cy, side, angle = crop_geometry(det, spec)
    s = max(2, int(round(side)))
    if angle == 0.0:
        return _region(image, int(round(cx - s / 2.0)), int(round(cy - s / 2.0)), s)
    # cut the axis-aligned square that contains the rotated square, rotate it, keep the centre
    rad = math.radians(angle)
    big = int(math.ceil(s * (abs(math.cos(rad)) + abs(math.sin(rad))))) + 2
    bx0, by0 = int(round(cx - big / 2.0)), int(round(cy - big / 2.0))
    patch = _region(image, bx0, by0, big)
    pcx, pcy = cx - bx0, cy - by0
    m = cv2.getRotationMatrix2D((pcx, pcy), angle, 1.0)  # rotating by +angle levels the eyes
    m[0, 2] += s / 2.0 - pcx
    m[1, 2] += s / 2.0 - pcy
    return cv2.warpAffine(patch, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_faces(image: np.ndarray, dets: Iterable[Detection], spec: CropSpec = CropSpec()) -> list[np.ndarray]:
    """:func:`crop_face` for each detection."""
    return [crop_face(image, d, spec) for d in dets]

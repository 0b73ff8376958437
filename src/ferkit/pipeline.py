"""Image -> faces -> emotions: the inference pipeline (numpy, OpenCV, onnxruntime; never torch).

    >>> import ferkit
    >>> faces = ferkit.analyze("photo.jpg")        # or a BGR / RGB / gray numpy array
    >>> faces[0].box, faces[0].emotion, faces[0].score, faces[0].probabilities

Steps, for each image: detect faces (:func:`ferkit.faces.detect_faces`, YuNet by default), cut a square
crop around each detection framed like FER2013 faces (:mod:`ferkit.faces.align`, per-detector margins
chosen by measurement), and classify the gray crops with :class:`ferkit.runtime.EmotionClassifier`
(whose preprocessing is the one :func:`ferkit.preprocess.prepare_faces`, configured by the model's own
metadata). :class:`Analyzer` keeps the detector and classifier loaded for repeated calls;
:func:`analyze` keeps a few analyzers cached by configuration.

Coordinates: ``FaceResult.box`` is (x, y, w, h) in pixels of the original image (x right, y down),
clipped to the image.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import FerkitError
from .faces import DEFAULT_MAX_SIDE, Detection, as_bgr, as_gray, check_pad, detect_faces, get_detector
from .faces.align import CropSpec, crop_faces
from .labels import EMOTION_COLORS_BGR

__all__ = ["FaceResult", "Analyzer", "analyze", "draw_results", "default_crop", "EMOTION_COLORS_BGR"]


@dataclass
class FaceResult:
    """One face and its emotion.

    box:             (x, y, w, h) in pixels of the analysed image, clipped to it.
    emotion:         the most probable label.
    score:           its probability (0..1).
    probabilities:   {label: probability} for every label of the model (sums to 1), in the model's order.
    detection_score: the face detector's confidence (0..1).
    landmarks:       five (x, y) points (eyes, nose, mouth corners) when the detector gives them, else None.
    track:           a stable id of this face across video frames (videos and the camera only), else None.
    """

    box: tuple[int, int, int, int]
    emotion: str
    score: float
    probabilities: dict[str, float]
    detection_score: float = 1.0
    landmarks: tuple[tuple[float, float], ...] | None = None
    track: int | None = None

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        """A JSON-ready dict: box [x, y, w, h], emotion, score, probabilities, detection_score (+ track, + extra)."""
        d: dict[str, Any] = dict(extra)
        d.update({
            "box": [int(v) for v in self.box],
            "emotion": self.emotion,
            "score": round(float(self.score), 6),
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
            "detection_score": round(float(self.detection_score), 4),
        })
        if self.track is not None:
            d["track"] = int(self.track)
        return d

    def with_probabilities(self, probs: Sequence[float], labels: Sequence[str]) -> "FaceResult":
        """A copy with new probabilities (e.g. smoothed over time); emotion and score follow them."""
        p = np.asarray(probs, dtype=np.float64)
        i = int(p.argmax())
        return FaceResult(box=self.box, emotion=labels[i], score=float(p[i]),
                          probabilities={lab: float(v) for lab, v in zip(labels, p)},
                          detection_score=self.detection_score, landmarks=self.landmarks, track=self.track)


def default_crop(detector: str) -> CropSpec:
    """The crop framing for a detector name (its ``default_crop``), or a plain box crop."""
    try:
        det = get_detector(detector)
    except FerkitError:
        return CropSpec()
    return getattr(det, "default_crop", None) or CropSpec()


def _to_image(image, channels: str) -> np.ndarray:
    """A path or array -> BGR uint8 (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        from .io import read_image

        return read_image(image)
    if isinstance(image, bytes):
        from .io import decode_image

        return decode_image(image, "image bytes")
    if hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "getbands"):  # a PIL image
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)  # upright, as a path to the same file is read
        if image.mode == "1" or image.mode == "L":
            return as_bgr(np.asarray(image.convert("L")))
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # 16-bit and float gray: by value range
            return as_bgr(np.asarray(image))
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    if not isinstance(image, np.ndarray):
        raise FerkitError(f"analyze() takes a path, encoded image bytes, a PIL image or a numpy image array, "
                          f"got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise FerkitError(f"expected an image array (H, W) or (H, W, 3|4), got shape {image.shape}")
    ch = channels.lower()
    if ch not in ("bgr", "rgb"):
        raise FerkitError(f"channels must be 'bgr' (OpenCV) or 'rgb' (PIL, matplotlib), got {channels!r}")
    bgr = as_bgr(image)
    if ch == "rgb" and image.ndim == 3 and image.shape[2] in (3, 4):
        bgr = np.ascontiguousarray(bgr[:, :, ::-1])
    return bgr


class Analyzer:
    """A loaded face detector + emotion classifier, reused across images and frames.

    model:        None/'default' (the bundled model), a bundled name, an ``.onnx`` path, or a classifier
                  object with ``labels`` and ``predict_proba(list of gray crops) -> (N, C)``.
    detector:     'auto' (YuNet when ``yuface`` is installed, else Haar), 'yunet', 'haar', 'none' (each image is
                  one face: images that are face crops already), or a detector object.
    min_face:     ignore faces smaller than this many pixels (shorter box side, original image pixels).
    confidence:   detector confidence threshold 0..1 (None: the detector's default).
    largest_only: keep only the largest face of each image.
    crop:         a :class:`~ferkit.faces.align.CropSpec` (None: the detector's measured default).
    align:        override the crop's eye-level alignment (None: the crop's setting).
    max_side:     images larger than this (pixels, longer side) are downscaled for detection.
    pad:          border added for detection, fraction of the longer side (None: the detector's default).
    tta:          the classifier's test-time augmentation (None: the model's default).
    """

    thread_safe = False  # the detectors serialise their own calls (a lock each), so ferkit.analyze may be called
    # from several threads; the server keeps one analysis at a time per worker (the setting docs/bench_server.txt measured)

    def __init__(self, model=None, *, detector="auto", min_face: int = 0, confidence: float | None = None,
                 largest_only: bool = False, crop: CropSpec | None = None, align: bool | None = None,
                 max_side: int | None = DEFAULT_MAX_SIDE, pad: float | None = None, tta=None,
                 threads: int | None = None):
        if hasattr(model, "predict_proba") and hasattr(model, "labels"):
            self.classifier = model
        else:
            from .runtime import EmotionClassifier

            kw: dict[str, Any] = {}
            if tta is not None:
                kw["tta"] = tta
            if threads is not None:
                kw["threads"] = threads
            self.classifier = EmotionClassifier(model, **kw)
        self.detector = get_detector(detector)
        self.detector_name = getattr(self.detector, "name", type(self.detector).__name__)
        if min_face is None or min_face < 0:
            raise FerkitError(f"min_face must be >= 0 pixels, got {min_face}")
        self.min_face = int(min_face)
        self.confidence = confidence
        self.largest_only = bool(largest_only)
        base = crop if crop is not None else (getattr(self.detector, "default_crop", None) or CropSpec())
        self.crop = base if align is None else base.with_(align=bool(align))
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                     or max_side < 64):
            raise FerkitError(f"max_side must be a whole number of pixels >= 64, or None for no limit; got {max_side!r}")
        self.max_side = max_side
        self.pad = None if pad is None else check_pad(pad)  # refused here, not at the first image
        self.labels: tuple[str, ...] = tuple(self.classifier.labels)

    @property
    def model_name(self) -> str:
        path = getattr(self.classifier, "path", None)
        return os.path.splitext(os.path.basename(str(path)))[0] if path else type(self.classifier).__name__

    def __repr__(self) -> str:
        return (f"Analyzer(model={self.model_name!r}, detector={self.detector_name!r}, crop={self.crop}, "
                f"min_face={self.min_face}, largest_only={self.largest_only})")

    # -- steps ------------------------------------------------------------------------------------
    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in a BGR/gray image, largest first (see :func:`ferkit.faces.detect_faces`)."""
        return detect_faces(image_bgr, self.detector, min_size=self.min_face, confidence=self.confidence,
                            largest_only=self.largest_only, max_side=self.max_side, pad=self.pad)

    def crops(self, image: np.ndarray, detections: Sequence[Detection]) -> list[np.ndarray]:
        """Gray square face crops (FER2013 framing) for the detections, at the image's resolution; with the
        ``none`` detector, the whole image (the classifier resizes it, the way a folder of face crops is read)."""
        if getattr(self.detector, "whole_image", False):
            gray = as_gray(image)
            return [gray for _ in detections]
        return crop_faces(as_gray(image), detections, self.crop)

    def classify(self, image: np.ndarray, detections: Sequence[Detection]) -> list[FaceResult]:
        """Emotion results for given detections in ``image`` (BGR or gray)."""
        if not detections:
            return []
        probs = np.asarray(self.classifier.predict_proba(self.crops(image, detections)), dtype=np.float64)
        h, w = image.shape[:2]
        out = []
        for det, p in zip(detections, probs):
            i = int(p.argmax())
            out.append(FaceResult(
                box=det.clipped(w, h), emotion=self.labels[i], score=float(p[i]),
                probabilities={lab: float(v) for lab, v in zip(self.labels, p)},
                detection_score=float(det.score), landmarks=det.landmarks,
            ))
        return out

    def analyze(self, image, *, channels: str = "bgr") -> list[FaceResult]:
        """A path or an image array (BGR by default; ``channels='rgb'`` for RGB; gray; BGRA) -> face results,
        largest face first. No face gives an empty list."""
        img = _to_image(image, channels)
        return self.classify(img, self.detect(img))

    __call__ = analyze

    def draw(self, image: np.ndarray, results: Sequence[FaceResult], **kw) -> np.ndarray:
        """An annotated BGR copy of ``image`` (see :func:`draw_results`)."""
        return draw_results(image, results, labels=self.labels, **kw)


# ------------------------------------------------------------------------------- module-level API
_ANALYZERS: "OrderedDict[tuple, Analyzer]" = OrderedDict()
_ANALYZERS_LOCK = threading.Lock()
_MAX_CACHED = 4


def get_analyzer(model=None, **options) -> Analyzer:
    """An :class:`Analyzer` for these options, cached (the few most recent configurations stay loaded)."""
    if hasattr(model, "predict_proba"):
        return Analyzer(model, **options)
    try:
        key = (str(model), tuple(sorted((k, repr(v)) for k, v in options.items())))
    except Exception:  # noqa: BLE001 - unhashable/odd option: just build one
        return Analyzer(model, **options)
    with _ANALYZERS_LOCK:
        if key in _ANALYZERS:
            _ANALYZERS.move_to_end(key)
            return _ANALYZERS[key]
    a = Analyzer(model, **options)
    with _ANALYZERS_LOCK:
        _ANALYZERS[key] = a
        while len(_ANALYZERS) > _MAX_CACHED:
            _ANALYZERS.popitem(last=False)
    return a


def analyze(image, *, model=None, detector="auto", min_face: int = 0, confidence: float | None = None,
            largest_only: bool = False, crop: CropSpec | None = None, align: bool | None = None,
            channels: str = "bgr", **options) -> list[FaceResult]:
    """Emotions of every face in ``image``.

    image:    a file path, encoded image bytes, a PIL image, or an image array: BGR (OpenCV, the default),
              RGB (pass ``channels='rgb'``), gray (H, W) or BGRA; uint8, 16-bit integers, or floats in
              0..1 or 0..255 (see :func:`ferkit.preprocess.to_uint8`). A PIL image is turned upright by its
              EXIF orientation, as a path to the same file is.
    model:    None (the bundled model), a bundled name, an ``.onnx`` path, or a classifier object.
    detector, min_face, confidence, largest_only, crop, align: see :class:`Analyzer`.

    Returns a list of :class:`FaceResult`, largest face first; empty when no face is found.
    """
    a = get_analyzer(model, detector=detector, min_face=min_face, confidence=confidence,
                     largest_only=largest_only, crop=crop, align=align, **options)
    return a.analyze(image, channels=channels)


# ------------------------------------------------------------------------------------------ drawing


def emotion_color(label: str) -> tuple[int, int, int]:
    if label in EMOTION_COLORS_BGR:
        return EMOTION_COLORS_BGR[label]
    h = sum(ord(c) * (i + 1) for i, c in enumerate(label))
    return (60 + h * 37 % 180, 60 + h * 71 % 180, 60 + h * 113 % 180)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.114 * bg[0] + 0.587 * bg[1] + 0.299 * bg[2]
    return (20, 20, 20) if luminance > 150 else (255, 255, 255)


def draw_marker(img: np.ndarray, emotion: str, center: tuple[int, int], radius: int) -> None:
    """Draw an emoji-like face for ``emotion`` (a yellow disc with eyes, brows and mouth), in place."""
    cx, cy = center
    r = max(4, int(radius))
    t = max(1, r // 8)
    aa = cv2.LINE_AA
    ink = (30, 30, 30)
    cv2.circle(img, (cx, cy), r, (40, 200, 250), -1, aa)
    cv2.circle(img, (cx, cy), r, ink, t, aa)
    ex, ey, er = int(0.38 * r), int(0.25 * r), max(1, int(0.12 * r))
    wide = emotion in ("surprise", "fear")
    for sx in (-1, 1):
        cv2.circle(img, (cx + sx * ex, cy - ey), int(er * (1.6 if wide else 1.0)), ink, -1, aa)
    # brows
    by = cy - int(0.55 * r)
    bw = int(0.22 * r)
    for sx in (-1, 1):
        x0 = cx + sx * ex
        if emotion == "angry":  # inner ends low: \ /
            p0, p1 = (x0 - bw, by + sx * int(0.1 * r)), (x0 + bw, by - sx * int(0.1 * r))
        elif emotion in ("sad", "fear"):  # inner ends high: / \
            p0, p1 = (x0 - bw, by - sx * int(0.1 * r)), (x0 + bw, by + sx * int(0.1 * r))
        elif emotion == "surprise":
            p0, p1 = (x0 - bw, by - int(0.1 * r)), (x0 + bw, by - int(0.1 * r))
        else:
            continue
        cv2.line(img, p0, p1, ink, t, aa)
    my = cy + int(0.38 * r)
    mw = int(0.45 * r)
    if emotion == "happy":
        cv2.ellipse(img, (cx, my - int(0.15 * r)), (mw, int(0.3 * r)), 0, 10, 170, ink, t + 1, aa)
    elif emotion in ("sad", "angry"):
        cv2.ellipse(img, (cx, my + int(0.15 * r)), (mw, int(0.22 * r)), 0, 190, 350, ink, t + 1, aa)
    elif emotion in ("surprise", "fear"):
        cv2.ellipse(img, (cx, my), (int(0.2 * r), int(0.25 * r)), 0, 0, 360, ink, -1, aa)
    elif emotion == "disgust":
        pts = np.array([[cx - mw, my], [cx - mw // 3, my - int(0.1 * r)], [cx + mw // 3, my + int(0.1 * r)],
                        [cx + mw, my]], np.int32)
        cv2.polylines(img, [pts], False, ink, t + 1, aa)
    elif emotion == "contempt":
        cv2.line(img, (cx - mw // 2, my), (cx + mw, my - int(0.15 * r)), ink, t + 1, aa)
    else:  # neutral and unknown labels
        cv2.line(img, (cx - mw, my), (cx + mw, my), ink, t + 1, aa)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (x0, y0, x1, y1) rectangles share any pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _panel_place(box, size, image_wh, taken, pad, below_tag) -> tuple[int, int] | None:
    """Where a face's probability panel goes: right of the box, left of it, below it, or inside it under the
    tag, the first place that fits in the image and covers no other face and no panel placed before; None
    when there is no such place (the panel is then left out: the tag still names the emotion)."""
    x, y, w, h = box
    pw, ph = size
    W, H = image_wh
    candidates = [(x + w + pad, y), (x - pad - pw, y), (x, y + h + pad), (x, y + below_tag)]
    for cx, cy in candidates:
        cy = max(0, min(cy, H - ph))
        rect = (cx, cy, cx + pw, cy + ph)
        if cx < 0 or cx + pw > W or cy < 0 or ph > H:
            continue
        if not any(_overlaps(rect, t) for t in taken):
            return cx, cy
    return None


def draw_results(image: np.ndarray, results: Sequence[FaceResult], *, labels: Sequence[str] | None = None,
                 bars: bool = True, marker: bool = True, show_track: bool = True, numbers: bool = False,
                 caption: str | None = None) -> np.ndarray:
    """An annotated BGR copy of ``image``: per face a box in its emotion's colour, a tag
    ``[#track] emotion 93%`` (``numbers``: ``1. emotion 93%``, the face's place in ``results``, as lists of
    the faces number them), an emoji-like marker, and a bar per label with its probability (left out for a
    face whose panel would cover another face or panel). ``caption`` (e.g. ``"12.3 FPS"``) is written in the
    top-left corner. Sizes scale with the image."""
    out = as_bgr(image).copy()
    H, W = out.shape[:2]
    unit = max(0.6, min(H, W) / 480.0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    aa = cv2.LINE_AA
    pad = max(2, int(3 * unit))
    thick = max(1, int(round(2 * unit)))
    # boxes first, then probability panels, then tags, so every tag stays readable on top
    for r in results:
        x, y, w, h = (int(v) for v in r.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), emotion_color(r.emotion), thick, aa)
    if bars:
        boxes = [tuple(int(v) for v in r.box) for r in results]
        panels: list[tuple[int, int, int, int]] = []
        for i, r in enumerate(results):
            if not r.probabilities:
                continue
            x, y, w, h = boxes[i]
            names = list(labels) if labels is not None else list(r.probabilities)
            bfs = 0.38 * unit
            row = int(max(9, 13 * unit))
            name_w = max(cv2.getTextSize(n, font, bfs, 1)[0][0] for n in names)
            bar_len = int(50 * unit)
            panel_w = name_w + bar_len + 3 * pad
            panel_h = row * len(names) + pad
            others = [(bx, by, bx + bw, by + bh) for j, (bx, by, bw, bh) in enumerate(boxes) if j != i]
            place = _panel_place((x, y, w, h), (panel_w, panel_h), (W, H), others + panels, pad, int(40 * unit))
            if place is None:
                continue
            px0, py0 = place
            panels.append((px0, py0, px0 + panel_w, py0 + panel_h))
            roi = out[py0:py0 + panel_h, px0:px0 + panel_w]
            if roi.size:
                roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken for contrast
            for k, name in enumerate(names):
                p = float(r.probabilities.get(name, 0.0))
                yy = py0 + pad + k * row
                cv2.putText(out, name, (px0 + pad, yy + row - 3), font, bfs, (235, 235, 235), 1, aa)
                bx0 = px0 + 2 * pad + name_w
                cv2.rectangle(out, (bx0, yy + 2), (bx0 + max(1, int(bar_len * p)), yy + row - 2),
                              emotion_color(name), -1)
    for i, r in enumerate(results):
        x, y, w, h = (int(v) for v in r.box)
        color = emotion_color(r.emotion)
        if numbers:
            prefix = f"{i + 1}. "
        else:
            prefix = f"#{r.track} " if (show_track and r.track is not None) else ""
        tag = prefix + f"{r.emotion} {r.score * 100:.0f}%"
        fs = 0.5 * unit
        ft = max(1, int(round(unit)))
        (tw, th), base = cv2.getTextSize(tag, font, fs, ft)
        text_h = th + base + 2 * pad
        mr = max(6, text_h // 2 + pad) if marker else 0  # marker radius
        tag_h = max(text_h, 2 * mr + 2)
        ty0 = y - tag_h if y - tag_h >= 0 else max(0, y)  # above the box, else inside its top
        ty0 = min(ty0, max(0, H - tag_h))
        tx0 = min(max(0, x), max(0, W - 1))
        x_text = tx0 + (2 * mr + pad if marker else 0)
        cv2.rectangle(out, (tx0, ty0), (x_text + tw + 2 * pad, ty0 + tag_h), color, -1)
        cv2.putText(out, tag, (x_text + pad, ty0 + (tag_h + th) // 2), font, fs, _text_color(color), ft, aa)
        if marker:
            draw_marker(out, r.emotion, (tx0 + mr + 1, ty0 + tag_h // 2), mr)
    if caption:
        fs = 0.6 * unit
        ft = max(1, int(round(unit)))
        (tw, th), base = cv2.getTextSize(caption, font, fs, ft)
        cv2.rectangle(out, (0, 0), (tw + 10, th + base + 10), (0, 0, 0), -1)
        cv2.putText(out, caption, (5, th + 5), font, fs, (255, 255, 255), ft, aa)
    return out

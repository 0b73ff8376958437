"""Hide every face in photos and videos: detect, widen the box, obfuscate (``ferkit anonymize``).

    >>> from ferkit.privacy.anonymize import Anonymizer, anonymize_image
    >>> hidden, boxes = anonymize_image(image_bgr, method="pixelate", strength=8)   # image_bgr is not changed
    >>> anon = Anonymizer("blur", 4)                  # keeps the detector loaded: reuse it over many images
    >>> result = anon.anonymize(image_bgr)            # result.image, result.boxes, result.regions
    >>> report = anon.anonymize_video("clip.mp4", "out/clip.mp4")   # same frame count and frame rate

A missed face is a privacy leak, so the settings lean towards hiding too much:

- **a lower detection threshold** than the emotion pipeline's (:data:`ANONYMIZE_CONFIDENCE` per detector;
  more false positives, which only hide a patch of background);
- **generous margins**: the detector's box ``(x, y, w, h)`` is widened by ``margin * w`` left and right,
  ``margin * h`` below and ``(margin + margin_top) * h`` above (forehead and hair); YuNet 0.25 + 0.15,
  Haar (a smaller box) 0.45 + 0.1 (:data:`ANONYMIZE_MARGINS`);
- **videos: a face's box is held** for ``hold_frames`` frames after the detector last saw it, and a face
  first seen at frame t is also hidden at the same place in the ``hold_frames`` frames before t (output is
  delayed by that many frames), so a detector missing a face for a few frames does not leak it;
- **more detection passes**: YuNet runs on the image as it is and again with a border of 0.25 of its size
  (:data:`ANONYMIZE_PADS`; the border finds faces that fill the whole photo), at up to ``max_side`` = 1920
  pixels (the emotion pipeline detects at 960, losing small faces in large photos); ``upscale=2`` adds a
  pass on the image enlarged 2x for faces under ~40 px.

Strength (see :mod:`ferkit.privacy.obfuscate` for the operations): by default (``relative_strength=True``)
a strength is given for a face as FER2013 frames it, 48 pixels across, and scaled to each face:

- ``pixelate S``: mosaic cells of ``S / 48`` of the face's width, so ``pixelate 8`` leaves 6 cells across
  any face (the same mosaic the ``privacy-report`` measures on 48x48 FER2013 faces);
- ``blur S``: Gaussian sigma of ``S / 48`` of the face's width;
- ``fill V``: a box of grey value V (0..255, 0 = black); nothing is scaled and nothing of the face is left.

"The face's width" is the side of the FER2013-style crop around the detection (``crop_scale x sqrt(w h)``
of the detector's box, the framing the emotion pipeline uses: 1.12 for YuNet, 1.03 for Haar). With
``relative_strength=False`` the strength is in pixels of the image (cell size or sigma), for every face.

Boxes are ``(x, y, w, h)`` in pixels of the image, x right, y down. Images are uint8 BGR (or gray) arrays
as :func:`ferkit.io.read_image` returns them. Nothing here imports torch.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from ..errors import FerkitError
from ..faces import Detection, check_pad, detect_faces, get_detector, iou
from ..io import IMAGE_WRITE_EXTS, write_image
from .obfuscate import (DEFAULT_STRENGTH, METHODS, MIN_CELL, MIN_SIGMA, check_method, obfuscate_region,
                        strength_for_region)

__all__ = [
    "ANONYMIZE_CONFIDENCE", "ANONYMIZE_PADS", "ANONYMIZE_MARGINS", "BORDER_PASS_MAX_SIDE", "DEFAULT_MARGIN",
    "DEFAULT_MARGIN_TOP", "DEFAULT_HOLD_FRAMES", "DEFAULT_MAX_SIDE", "write_image",
    "HiddenRegion", "AnonymizedImage", "AnonymizedFrame", "VideoAnonymizeReport", "Anonymizer",
    "anonymize_image", "expand_box", "IMAGE_WRITE_EXTS",
]

#: Detection thresholds for anonymising, lower than each detector's default (0.5 for both): a missed face
#: leaks, a false positive only hides some background. Measured on faces-dev in docs/anonymize.md.
#: YuNet (libfacedetection) itself never reports a face below about 0.2, so 0.3 is near its floor;
#: Haar's score is n / (n + 3) for n overlapping windows, so 0.4 means 2 windows instead of 3.
ANONYMIZE_CONFIDENCE = {"yunet": 0.3, "haar": 0.4}
#: Detection passes per detector, each with a border of this fraction of the image's longer side; the faces
#: found by any pass are hidden. YuNet misses faces that fill the whole photo without a border and some small
#: faces with one (measured on faces-dev, docs/anonymize.md), so it runs twice; Haar's default border is 0.25.
ANONYMIZE_PADS = {"yunet": (0.0, 0.25), "haar": (0.25,)}
#: longer side (pixels) of the image in the detection passes after the first: they look for faces that fill
#: much of the photo, which stay large when the image is shrunk, so they need not cost as much as the first
BORDER_PASS_MAX_SIDE = 320
#: widening of each detection box on every side, as a fraction of the box's width (left, right) or height
DEFAULT_MARGIN = 0.25
#: extra widening above the box (forehead, hair), as a fraction of the box's height
DEFAULT_MARGIN_TOP = 0.15
#: (margin, margin_top) per detector. Haar's box is smaller (brows to mouth) than YuNet's (to the chin): to
#: cover the region YuNet's box + the default margins covers, Haar's box needs 0.22 of its width each side,
#: 0.41 of its height below and 0.50 above in 90% of 192 faces-dev photos
#: (``benchmarks/eval_anonymize.py --margins``).
ANONYMIZE_MARGINS = {"yunet": (DEFAULT_MARGIN, DEFAULT_MARGIN_TOP), "haar": (0.45, 0.1)}
#: videos: frames a face stays hidden at its last place after the detector lost it (and before it found it)
DEFAULT_HOLD_FRAMES = 8
#: longer side (pixels) of the copy the detector sees; larger images are downscaled for detection only
DEFAULT_MAX_SIDE = 1920
#: image extensions written as they are; any other image is written as .png


def expand_box(box: Sequence[float], margin: float = DEFAULT_MARGIN,
               margin_top: float = DEFAULT_MARGIN_TOP) -> tuple[float, float, float, float]:
    """A detection box (x, y, w, h) widened by ``margin`` x w left and right, ``margin`` x h below and
    (``margin`` + ``margin_top``) x h above. Not clipped to the image (floats, pixels)."""
    x, y, w, h = (float(v) for v in box)
    return (x - margin * w, y - (margin + margin_top) * h, w * (1 + 2 * margin), h * (1 + 2 * margin + margin_top))


def _grow(box: Sequence[float], factor: float) -> tuple[float, float, float, float]:
    """``box`` scaled by ``factor`` about its centre."""
    x, y, w, h = (float(v) for v in box)
    nw, nh = w * factor, h * factor
    return (x + (w - nw) / 2, y + (h - nh) / 2, nw, nh)


def _clip(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The pixels (x, y, w, h) of ``box`` inside a ``width`` x ``height`` image (what obfuscate_region changes)."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
    x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True)
class HiddenRegion:
    """One obfuscated region.

    region:   the widened box that is obfuscated, (x, y, w, h) in image pixels (floats; may extend past the
              image border, only the part inside is changed).
    face_box: the detector's box the region was made from, (x, y, w, h) in pixels.
    strength: the strength applied, in image pixels (cell size, sigma) or the grey value for ``fill``.
    score:    the detector's confidence (0..1).
    kind:     "detected" (found in this image/frame), "held" (video: kept from an earlier frame where the
              detector last saw the face) or "ahead" (video: copied back from a later frame where the face
              was first found).
    """

    region: tuple[float, float, float, float]
    face_box: tuple[int, int, int, int]
    strength: float
    score: float
    kind: str = "detected"

    def clipped(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The pixels of ``region`` inside a ``width`` x ``height`` image, as (x, y, w, h) ints, or None."""
        return _clip(self.region, width, height)

    def to_dict(self, width: int | None = None, height: int | None = None) -> dict[str, Any]:
        box = self.clipped(width, height) if width is not None and height is not None else None
        return {
            "box": list(box) if box else [round(v, 1) for v in self.region],
            "face_box": [int(v) for v in self.face_box],
            "score": round(float(self.score), 4),
            "strength": round(float(self.strength), 3),
            "kind": self.kind,
        }


@dataclass
class AnonymizedImage:
    """The result of :meth:`Anonymizer.anonymize`: the image with every region hidden, the regions, and
    ``boxes``, the (x, y, w, h) pixels actually changed (one per region, clipped to the image)."""

    image: np.ndarray
    regions: list[HiddenRegion]
    boxes: list[tuple[int, int, int, int]]

    @property
    def faces(self) -> int:
        """How many faces were hidden (regions from this image's own detections)."""
        return sum(1 for r in self.regions if r.kind == "detected")

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        h, w = self.image.shape[:2]
        d = dict(extra)
        d.update({"faces": self.faces, "regions": [r.to_dict(w, h) for r in self.regions]})
        return d


@dataclass
class AnonymizedFrame(AnonymizedImage):
    """One video frame of :meth:`Anonymizer.stream`: ``index`` counts frames from 0 in input order."""

    index: int = 0

    @property
    def hidden(self) -> int:
        """Regions hidden in this frame, detected + held + ahead."""
        return len(self.regions)


@dataclass
class VideoAnonymizeReport:
    """What :meth:`Anonymizer.anonymize_video` did.

    frames: frames read and written; fps: the frame rate of the input (and of the output);
    frames_with_faces: frames in which at least one region was hidden; faces_detected: detections summed
    over frames; regions_hidden: regions hidden summed over frames (detections + held + ahead);
    held: how many of those came from neighbouring frames; max_per_frame: most regions hidden in one frame;
    seconds: processing wall time; interrupted: the camera/video was stopped with Ctrl+C.
    """

    source: str
    output: str | None = None
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    frames_with_faces: int = 0
    faces_detected: int = 0
    regions_hidden: int = 0
    held: int = 0
    max_per_frame: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def add(self, fr: AnonymizedFrame) -> None:
        self.frames += 1
        n = fr.hidden
        if n:
            self.frames_with_faces += 1
        self.faces_detected += fr.faces
        self.regions_hidden += n
        self.held += n - fr.faces
        self.max_per_frame = max(self.max_per_frame, n)

    @property
    def processing_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "output": self.output, "frames": self.frames, "fps": round(self.fps, 3),
                "width": self.width, "height": self.height, "frames_with_faces": self.frames_with_faces,
                "faces_detected": self.faces_detected, "regions_hidden": self.regions_hidden, "held": self.held,
                "max_per_frame": self.max_per_frame, "processing_fps": round(self.processing_fps, 2),
                "interrupted": self.interrupted}


def _smaller(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def _check_pads(pad, detector_name: str, detector) -> tuple[float, ...]:
    """``pad`` (None, a number or a sequence of numbers) -> a non-empty tuple of borders in 0..1."""
    if pad is None:
        return tuple(ANONYMIZE_PADS.get(detector_name, (float(getattr(detector, "default_pad", 0.0)),)))
    values = [pad] if isinstance(pad, (int, float)) else list(pad)
    out = [check_pad(v) for v in values]
    if not out:
        raise FerkitError("pad needs at least one value (e.g. 0 or 0,0.25)")
    return tuple(dict.fromkeys(out))


def _check_unit_fraction(name: str, value: float, upper: float = 5.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise FerkitError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= upper):
        raise FerkitError(f"{name} is a fraction of the face box (0..{upper:g}, e.g. 0.25), got {value!r}")
    return v


class Anonymizer:
    """A loaded face detector and obfuscation settings, reused over photos, folders and videos.

    method:            "pixelate", "blur" or "fill".
    strength:          see the module docstring; None: the method's default (pixelate 8, blur 4, fill 0).
    relative_strength: True: ``strength`` is for a 48-pixel face and is scaled to each face's size;
                       False: ``strength`` is in image pixels (``fill`` is never scaled).
    detector:          "auto", "yunet", "haar" or a detector object (see :mod:`ferkit.faces`).
    confidence:        detection threshold 0..1; None: :data:`ANONYMIZE_CONFIDENCE` for the detector
                       (lower than the emotion pipeline's), or 0.6 x the detector's own default.
    margin:            widening of each box per side, fraction of its width/height; None:
                       :data:`ANONYMIZE_MARGINS` for the detector (YuNet 0.25, Haar 0.45), else 0.25.
    margin_top:        extra widening above the box, fraction of its height (None: YuNet 0.15, Haar 0.1).
    min_face:          ignore detections smaller than this many pixels (shorter side); default 0 (hide all).
    max_side:          the detector sees images downscaled to at most this many pixels on the longer side.
    pad:               border(s) added around the image for detection, as a fraction of its longer side: one
                       number, or several for one detection pass each (the union is hidden). A border finds
                       faces that fill the photo, no border finds small faces better. None:
                       :data:`ANONYMIZE_PADS` for the detector (YuNet: two passes, 0 and 0.25), else the
                       detector's own default (see :func:`ferkit.faces.detect_faces`).
    upscale:           an extra detection pass on the image enlarged by this factor (1 = off; 2 finds faces
                       under ~40 px that the other passes miss, at about 4x the detection time).
    hold_frames:       videos: frames a face stays hidden after (and before) the detector saw it.
    hold_growth:       videos: a held box grows by this fraction of its size per frame away from the
                       detection (faces move).
    iou_threshold:     videos: the overlap (intersection over union) at which a detection is taken to be
                       the same face as a held box.
    """

    def __init__(self, method: str = "pixelate", strength: float | None = None, *, relative_strength: bool = True,
                 detector="auto", confidence: float | None = None, margin: float | None = None,
                 margin_top: float | None = None, min_face: int = 0, max_side: int | None = DEFAULT_MAX_SIDE,
                 pad: float | Sequence[float] | None = None, upscale: float = 1.0,
                 hold_frames: int = DEFAULT_HOLD_FRAMES, hold_growth: float = 0.05, iou_threshold: float = 0.3):
        if not isinstance(method, str) or method.lower() not in METHODS:
            raise FerkitError(f"unknown obfuscation method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method.lower()
        if strength is None:
            strength = DEFAULT_STRENGTH[self.method]
        check_method(self.method, strength)
        least = {"pixelate": MIN_CELL, "blur": MIN_SIGMA}.get(self.method)
        if least is not None and float(strength) < least:  # a weaker setting leaves faces as they were
            raise FerkitError(f"{self.method} strength {float(strength):g} would leave faces visible; use at least "
                              f"{least:g} ({'the mosaic cell' if self.method == 'pixelate' else 'the Gaussian sigma'}"
                              f"{', per 48-px face' if relative_strength else ', in pixels'})")
        self.strength = float(strength)
        self.relative_strength = bool(relative_strength)
        self.detector = get_detector(detector)
        self.detector_name = str(getattr(self.detector, "name", type(self.detector).__name__))
        if confidence is None:
            confidence = ANONYMIZE_CONFIDENCE.get(
                self.detector_name, 0.6 * float(getattr(self.detector, "default_confidence", 0.5)))
        try:
            confidence = float(confidence)
        except (TypeError, ValueError):
            raise FerkitError(f"confidence must be a number between 0 and 1, got {confidence!r}") from None
        if not 0.0 <= confidence <= 1.0:
            raise FerkitError(f"confidence must be between 0 and 1, got {confidence:g}")
        self.confidence = confidence
        default_margin, default_top = ANONYMIZE_MARGINS.get(self.detector_name, (DEFAULT_MARGIN, DEFAULT_MARGIN_TOP))
        self.margin = _check_unit_fraction("margin", default_margin if margin is None else margin)
        self.margin_top = _check_unit_fraction("margin_top", default_top if margin_top is None else margin_top)
        if min_face is None or int(min_face) < 0:
            raise FerkitError(f"min_face must be >= 0 pixels, got {min_face}")
        self.min_face = int(min_face)
        if max_side is not None and int(max_side) < 64:
            raise FerkitError(f"max_side must be at least 64 pixels (or None), got {max_side}")
        self.max_side = None if max_side is None else int(max_side)
        self.pads = _check_pads(pad, self.detector_name, self.detector)
        try:
            self.upscale = float(upscale)
        except (TypeError, ValueError):
            self.upscale = float("nan")
        if not 1.0 <= self.upscale <= 4.0:
            raise FerkitError(f"upscale is a factor from 1 (off) to 4, e.g. 2, got {upscale!r}")
        if int(hold_frames) != hold_frames or hold_frames < 0:
            raise FerkitError(f"hold_frames must be a whole number >= 0, got {hold_frames}")
        self.hold_frames = int(hold_frames)
        self.hold_growth = _check_unit_fraction("hold_growth", hold_growth, upper=1.0)
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise FerkitError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        crop = getattr(self.detector, "default_crop", None)
        #: face width = crop_scale x sqrt(w h) of the detector box: the FER2013 framing of the emotion pipeline
        self.crop_scale = float(getattr(crop, "scale", 1.0) or 1.0)

    def __repr__(self) -> str:
        unit = "per 48-px face" if self.relative_strength and self.method != "fill" else "px"
        return (f"Anonymizer({self.method} {self.strength:g} {unit}, detector={self.detector_name}, "
                f"confidence={self.confidence:g}, margin={self.margin:g}+{self.margin_top:g} top)")

    # ------------------------------------------------------------------------------------- images
    def face_size(self, face_box: Sequence[float]) -> float:
        """The width in pixels of the face in ``face_box`` as FER2013 frames it (``crop_scale x sqrt(w h)``)."""
        return self.crop_scale * math.sqrt(max(1.0, float(face_box[2])) * max(1.0, float(face_box[3])))

    def strength_for(self, face_box: Sequence[float]) -> float:
        """The strength applied to the face in ``face_box``, in image pixels (or the grey value for fill)."""
        if not self.relative_strength:
            return self.strength
        return strength_for_region(self.method, self.strength, self.face_size(face_box))

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in ``image`` at this anonymizer's (low) threshold, largest first: the union of one detection
        pass per border in ``pads`` (a face found by several passes counts once: boxes overlapping by
        IoU >= 0.3 are the same face, the first pass's box is kept)."""
        found: list[Detection] = []
        for dets in self.detection_passes(image):
            for d in dets:
                if not any(iou(d.box, f.box) >= 0.3 for f in found):
                    found.append(d)
        found.sort(key=lambda d: (-d.area, -d.score))
        return found

    def detection_passes(self, image: np.ndarray) -> Iterator[list[Detection]]:
        """The detections of each pass: one per border in ``pads`` (the first at up to ``max_side`` pixels, the
        others at up to :data:`BORDER_PASS_MAX_SIDE`), then one on the image enlarged ``upscale`` times."""
        for k, pad in enumerate(self.pads):
            side = self.max_side if k == 0 else _smaller(self.max_side, BORDER_PASS_MAX_SIDE)
            yield detect_faces(image, self.detector, confidence=self.confidence, min_size=self.min_face,
                               max_side=side, pad=pad)
        if self.upscale > 1.0:
            f = self.upscale
            big = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
            dets = detect_faces(big, self.detector, confidence=self.confidence, min_size=int(self.min_face * f),
                                max_side=None if self.max_side is None else int(self.max_side * f), pad=self.pads[0])
            yield [d.scaled(1.0 / f) for d in dets]

    def regions(self, image: np.ndarray) -> list[HiddenRegion]:
        """The regions to hide in ``image``: each detection widened by the margins, with its strength."""
        out = []
        for d in self.detect(image):
            out.append(HiddenRegion(region=expand_box(d.box, self.margin, self.margin_top),
                                    face_box=tuple(int(v) for v in d.box), strength=self.strength_for(d.box),
                                    score=float(d.score)))
        return out

    def hide(self, image: np.ndarray, regions: Sequence[HiddenRegion]) -> list[tuple[int, int, int, int]]:
        """Obfuscate ``regions`` of ``image`` in place. Returns the changed (x, y, w, h) box of each region
        (regions wholly outside the image are left out)."""
        boxes = []
        for r in regions:
            changed = obfuscate_region(image, r.region, self.method, r.strength)
            if changed is not None:
                boxes.append(changed)
        return boxes

    def anonymize(self, image: np.ndarray, *, inplace: bool = False) -> AnonymizedImage:
        """Hide every face found in ``image`` (uint8 BGR (H, W, 3) or gray (H, W)).

        The input array is not modified unless ``inplace=True`` (then ``result.image`` is ``image``).
        """
        image = _check_image(image)
        regions = self.regions(image)
        out = image if inplace else image.copy()
        boxes = self.hide(out, regions)
        return AnonymizedImage(image=out, regions=regions, boxes=boxes)

    __call__ = anonymize

    def anonymize_file(self, source: str | os.PathLike, dest: str | os.PathLike, *,
                       jpeg_quality: int = 95) -> AnonymizedImage:
        """Read the image ``source`` (upright, per its EXIF orientation), hide its faces and write ``dest``.

        ``dest`` may not be ``source`` (the original is never overwritten). Metadata (EXIF: GPS, camera,
        date) is not copied. Raises FerkitError for an unreadable image or an unwritable destination.
        """
        from ..io import read_image

        src, dst = Path(source), Path(dest)
        if dst.exists() and src.exists() and dst.resolve() == src.resolve():
            raise FerkitError(f"{dst}: would overwrite the source image; choose another output folder")
        result = self.anonymize(read_image(src), inplace=True)
        write_image(dst, result.image, jpeg_quality=jpeg_quality)
        return result

    # ------------------------------------------------------------------------------------- videos
    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[AnonymizedFrame]:
        """Anonymise a sequence of frames (BGR uint8), yielding one :class:`AnonymizedFrame` per input frame,
        in order. Input frames are not modified.

        Besides each frame's own detections, a face is hidden at its last box (grown by ``hold_growth`` per
        frame) for ``hold_frames`` frames after the detector last saw it, and at its first box for the
        ``hold_frames`` frames before the detector first saw it; for the latter, output lags the input by
        ``hold_frames`` frames (they are kept in memory).
        """
        hold = self.hold_frames
        thr = self.iou_threshold
        held: list[tuple[HiddenRegion, int]] = []      # (region as last detected, frames since)
        pending: deque[tuple[int, np.ndarray, list[HiddenRegion]]] = deque()
        for index, frame in enumerate(frames):
            frame = _check_image(frame)
            found = self.regions(frame)
            regions = list(found)
            # forward: faces seen before but not now stay hidden for `hold` frames
            kept = []
            for reg, missed in held:
                if any(iou(reg.region, f.region) >= thr for f in found):
                    continue  # the detector sees this face again: its new box replaces the held one
                missed += 1
                if missed <= hold:
                    kept.append((reg, missed))
                    regions.append(_moved(reg, missed, self.hold_growth, "held"))
            held = [(f, 0) for f in found] + kept
            # backward: a face found now is also hidden in the buffered earlier frames that lack it
            for age, (_, _, earlier) in enumerate(reversed(pending), 1):
                for f in found:
                    if not any(iou(f.region, e.region) >= thr for e in earlier):
                        earlier.append(_moved(f, age, self.hold_growth, "ahead"))
            pending.append((index, frame.copy(), regions))
            while len(pending) > hold:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())

    def _finish(self, index: int, frame: np.ndarray, regions: list[HiddenRegion]) -> AnonymizedFrame:
        boxes = self.hide(frame, regions)  # frame is stream()'s own copy
        return AnonymizedFrame(image=frame, regions=regions, boxes=boxes, index=index)

    def anonymize_video(self, source, dest: str | os.PathLike | None, *, max_frames: int | None = None,
                        on_frame: Callable[[AnonymizedFrame], None] | None = None,
                        progress: bool = False) -> VideoAnonymizeReport:
        """Anonymise a video file (or a camera: an int index or :class:`ferkit.io.Source`) into ``dest``
        (mp4, codec mp4v, the input's frame rate and size; None: write nothing, only report).

        Every frame read is written, so the output has the input's frame count. A camera runs until
        ``max_frames`` or Ctrl+C (then ``report.interrupted``). Raises FerkitError when the source cannot be
        opened or holds no readable frame.
        """
        from ..video import FrameReader, VideoSink, progress_bar

        reader = FrameReader(source, max_frames=max_frames)
        if dest is not None and not reader.is_camera:
            d, s = Path(dest), Path(reader.name)
            if d.exists() and d.resolve() == s.resolve():
                reader.close()
                raise FerkitError(f"{d}: would overwrite the source video; choose another output folder")
        report = VideoAnonymizeReport(source=reader.name, fps=reader.fps)
        sink = VideoSink(dest, reader.fps) if dest is not None else None
        bar = progress_bar(reader, max_frames) if progress else None
        t0 = time.perf_counter()
        try:
            for fr in self.stream(frame for _, _, frame in reader):
                if report.frames == 0:
                    report.height, report.width = fr.image.shape[:2]
                report.add(fr)
                if sink is not None:
                    sink.write(fr.image)
                if on_frame is not None:
                    on_frame(fr)
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            if not reader.is_camera:
                raise
            report.interrupted = True
        finally:
            reader.close()
            if sink is not None:
                sink.close()
            if bar is not None:
                bar.close()
        report.seconds = time.perf_counter() - t0
        if report.frames == 0:
            raise FerkitError(f"{reader.name}: no frame could be read (empty or corrupt video)")
        if sink is not None and sink.frames:
            report.output = str(sink.path)
        return report


def _moved(reg: HiddenRegion, frames: int, growth: float, kind: str) -> HiddenRegion:
    """``reg`` used ``frames`` frames away from its detection: grown by ``growth`` per frame, marked ``kind``."""
    return HiddenRegion(region=_grow(reg.region, 1.0 + growth * frames), face_box=reg.face_box,
                        strength=reg.strength, score=reg.score, kind=kind)


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise FerkitError(f"expected an image as a numpy array, got {type(image).__name__} (read files with "
                          "ferkit.io.read_image, or use Anonymizer.anonymize_file)")
    if image.dtype != np.uint8:
        raise FerkitError(f"expected a uint8 image, got {image.dtype}")
    bad_channels = image.ndim == 3 and image.shape[2] not in (1, 3, 4)
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1 or bad_channels:
        raise FerkitError(f"expected an image (H, W) or (H, W, 3), got shape {image.shape}")
    return image


def anonymize_image(image: np.ndarray, method: str = "pixelate", strength: float | None = None, *,
                    detector="auto", confidence: float | None = None, margin: float | None = None,
                    margin_top: float | None = None, relative_strength: bool = True, min_face: int = 0,
                    inplace: bool = False) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Hide every face in ``image`` (uint8 BGR or gray). Returns (the new image, the (x, y, w, h) boxes hidden).

    One-off convenience over :class:`Anonymizer` (the detector itself is cached per process); see it for the
    parameters. ``image`` is not modified unless ``inplace=True``.
    """
    anon = Anonymizer(method, strength, relative_strength=relative_strength, detector=detector,
                      confidence=confidence, margin=margin, margin_top=margin_top, min_face=min_face)
    result = anon.anonymize(image, inplace=inplace)
    return result.image, result.boxes

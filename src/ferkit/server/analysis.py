"""The server's view of an analyzer: anything that turns a BGR image into face results.

The app takes any of:

- an object with ``analyze(image_bgr) -> list of faces`` (ferkit's pipeline ``Analyzer``, or a fake in tests);
- a plain callable ``f(image_bgr) -> list of faces``;
- nothing: then :func:`load_analyzer` builds ferkit's own pipeline once per worker process.

A face is anything with ``box`` (x, y, w, h) in image pixels, ``emotion``, ``score`` and ``probabilities``
({label: p}) as attributes or dict keys. Optional attributes of the analyzer: ``model_name`` (str, shown in
results), ``thread_safe`` (bool; when False or absent, calls are serialised by a lock), ``draw(image, faces)``
(returns an annotated copy; else the server draws its own overlay).
"""
from __future__ import annotations

import importlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from ..errors import FerkitError
from ..labels import EMOTION_COLORS_BGR
from .settings import ServerSettings

_FALLBACK_COLOR = (200, 200, 200)


@dataclass
class Face:
    """One analysed face: ``box`` = (x, y, w, h) in pixels of the analysed image."""

    box: tuple[int, int, int, int]
    emotion: str
    score: float
    probabilities: dict[str, float]
    detection_score: float | None = None  # the face detector's confidence 0..1, when the analyzer gives one
    raw: Any = field(default=None, repr=False, compare=False)  # the analyzer's own result object

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "emotion": self.emotion, "score": self.score,
                "probabilities": dict(self.probabilities), "detection_score": self.detection_score}


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj[name]
    return getattr(obj, name)


def to_face(obj: Any) -> Face:
    """Normalise one face result (pipeline FaceResult, dict, ...) to :class:`Face`."""
    box = tuple(int(round(float(v))) for v in _field(obj, "box"))
    if len(box) != 4:
        raise ValueError(f"a face box must be (x, y, w, h), got {box}")
    probs = {str(k): float(v) for k, v in dict(_field(obj, "probabilities")).items()}
    det = obj.get("detection_score") if isinstance(obj, dict) else getattr(obj, "detection_score", None)
    return Face(box=box, emotion=str(_field(obj, "emotion")), score=float(_field(obj, "score")), probabilities=probs,
                detection_score=float(det) if det is not None else None, raw=obj)


class ServerAnalyzer:
    """Wraps an analyzer object or callable: normalises its faces, serialises calls unless it is thread-safe."""

    def __init__(self, analyzer: Any, model_name: str | None = None):
        if hasattr(analyzer, "analyze") and callable(analyzer.analyze):
            self._fn: Callable[[np.ndarray], Any] = analyzer.analyze
        elif callable(analyzer):
            self._fn = analyzer
        else:
            raise TypeError(f"an analyzer must have analyze(image) or be callable, got {type(analyzer).__name__}")
        self.wrapped = analyzer
        self.model_name = str(model_name or getattr(analyzer, "model_name", None) or type(analyzer).__name__)
        self.thread_safe = bool(getattr(analyzer, "thread_safe", False))
        self._draw = getattr(analyzer, "draw", None)
        self._draw_numbers = _takes_keyword(self._draw, "numbers")  # number the faces as the page's cards do
        self._lock = threading.Lock()

    def analyze(self, image_bgr: np.ndarray) -> list[Face]:
        if self.thread_safe:
            raw = self._fn(image_bgr)
        else:
            with self._lock:
                raw = self._fn(image_bgr)
        return [to_face(f) for f in raw]

    def annotate(self, image_bgr: np.ndarray, faces: list[Face]) -> np.ndarray:
        """An annotated copy of the image (boxes, labels); the analyzer's own ``draw`` when it has one."""
        if callable(self._draw):
            try:
                extra = {"numbers": True} if self._draw_numbers else {}
                out = self._draw(image_bgr, [f.raw if f.raw is not None else f for f in faces], **extra)
                if isinstance(out, np.ndarray) and out.shape[:2] == image_bgr.shape[:2]:
                    return out
            except Exception:  # noqa: BLE001 - fall back to the server's drawing rather than fail the request
                pass
        return draw_faces(image_bgr, faces)


def _takes_keyword(fn, name: str) -> bool:
    """Whether callable ``fn`` accepts keyword ``name`` (directly or through ``**kwargs``)."""
    import inspect

    if not callable(fn):
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def draw_faces(image_bgr: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The server's overlay: a box per face in its emotion's colour and a tag ``emotion 93%`` above it.
    Line width and text size scale with the image so the overlay reads at any resolution."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    unit = max(1.0, min(h, w) / 400.0)
    thickness = max(1, int(round(2 * unit)))
    font_scale = 0.5 * unit
    for i, f in enumerate(faces):
        x, y, bw, bh = f.box
        color = EMOTION_COLORS_BGR.get(f.emotion, _FALLBACK_COLOR)
        cv2.rectangle(out, (x, y), (x + bw, y + bh), color, thickness, cv2.LINE_AA)
        label = f"{i + 1}. {f.emotion} {f.score * 100:.0f}%"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, thickness // 2))
        pad = max(2, int(3 * unit))
        ty0 = y - th - base - 2 * pad
        if ty0 < 0:  # no room above: put the tag inside the top of the box
            ty0 = y
        cv2.rectangle(out, (x, ty0), (x + tw + 2 * pad, ty0 + th + base + 2 * pad), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (20, 20, 20) if luminance > 150 else (255, 255, 255)
        cv2.putText(out, label, (x + pad, ty0 + pad + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color,
                    max(1, thickness // 2), cv2.LINE_AA)
    return out


def _import_spec(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise FerkitError(f"--analyzer must look like 'package.module:name', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FerkitError(f"cannot import the analyzer module {module_name!r}: {e}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise FerkitError(f"module {module_name!r} has no attribute {attr!r} (from --analyzer {spec})") from None
    if hasattr(obj, "analyze") and not inspect.isclass(obj):
        return obj
    if callable(obj):
        return obj()  # a zero-argument factory (class or function) returning the analyzer
    raise FerkitError(f"--analyzer {spec} is neither an analyzer object nor a factory")


def _model_name_of(obj: Any, settings: ServerSettings) -> str:
    for attr in ("model_name", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    classifier = getattr(obj, "classifier", None)
    path = getattr(classifier, "path", None) or getattr(classifier, "model_path", None)
    if path:
        from pathlib import Path

        return Path(path).stem
    return settings.model or "default"


def check_analyzer_settings(settings: ServerSettings) -> None:
    """Checks that the analyzer of ``settings`` can be built (import spec; the model file, opened once; the
    detector name), in the parent process before the workers start; raises FerkitError with a one-line message."""
    if settings.analyzer:
        module_name, _, attr = settings.analyzer.partition(":")
        if not module_name or not attr:
            raise FerkitError(f"--analyzer must look like 'package.module:name', got {settings.analyzer!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise FerkitError(f"cannot import the analyzer module {module_name!r}: {e}") from None
        if not hasattr(module, attr):
            raise FerkitError(f"module {module_name!r} has no attribute {attr!r} (from --analyzer {settings.analyzer})")
        return
    from ..runtime import EmotionClassifier

    EmotionClassifier(settings.model, threads=1)  # opens the model once: a file that is no model fails here
    if settings.detector:
        from ..faces import get_detector

        get_detector(settings.detector)


def load_analyzer(settings: ServerSettings) -> ServerAnalyzer:
    """Build the analyzer for one worker process: ``settings.analyzer`` when set, else ferkit's pipeline with
    ``settings.model`` / ``settings.detector``. Raises FerkitError when the model cannot be loaded."""
    if settings.analyzer:
        obj = _import_spec(settings.analyzer)
        return ServerAnalyzer(obj, model_name=getattr(obj, "model_name", None))
    from .. import pipeline  # the inference pipeline (numpy, OpenCV, onnxruntime; never torch)

    kwargs: dict[str, Any] = {}
    if settings.model:
        kwargs["model"] = settings.model
    if settings.detector:
        kwargs["detector"] = settings.detector
    if hasattr(pipeline, "Analyzer"):
        obj = pipeline.Analyzer(**kwargs)
        return ServerAnalyzer(obj, model_name=_model_name_of(obj, settings))

    def analyze(image: np.ndarray):  # pragma: no cover - older pipeline without the Analyzer class
        return pipeline.analyze(image, **kwargs)

    return ServerAnalyzer(analyze, model_name=settings.model or "default")

"""The torch-free emotion classifier: an ONNX model exported by ``ferkit export`` run with onnxruntime.

This module never imports torch (``pip install ferkit`` alone runs it). The model file carries everything
the runtime needs in its metadata (see :mod:`ferkit.export`): the label names in output order, the
:class:`~ferkit.preprocess.PreprocessSpec`, the input size, the default test-time augmentation and, for a
calibrated model, the temperature of its probabilities (``ferkit export MODEL --calibrate``), so nothing is
guessed here.

    >>> from ferkit.runtime import EmotionClassifier
    >>> clf = EmotionClassifier()                 # the bundled default model (src/ferkit/assets/default.onnx)
    >>> probs = clf.predict_proba(faces)          # faces: uint8 (N, 48, 48) -> float32 (N, C), rows sum to 1
    >>> [clf.labels[i] for i in probs.argmax(1)]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import FerkitError
from .metrics import scale_temperature, softmax
from .preprocess import PreprocessSpec, prepare_faces
from .tta import normalize_tta, predict_proba_tta

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
METADATA_FORMAT = "ferkit-onnx-1"
REQUIRED_KEYS = ("ferkit_labels", "ferkit_preprocess", "ferkit_input_size")
DEFAULT_BATCH_SIZE = 256


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package (``assets/<name>.onnx``)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.stem for p in ASSETS_DIR.glob("*.onnx"))


def resolve_model_path(model: str | os.PathLike | None = None) -> Path:
    """None/'default' -> the bundled default model; a bundled name -> ``assets/<name>.onnx``; else a path."""
    if model is None:
        model = "default"
    if isinstance(model, str) and os.sep not in model and "/" not in model and not model.endswith(".onnx"):
        p = ASSETS_DIR / f"{model}.onnx"
        if p.is_file():
            return p
        if not Path(model).exists():
            have = bundled_models()
            raise FerkitError(
                f"no bundled model named {model!r} (looked for {p}); "
                + (f"bundled models: {', '.join(have)}" if have else "this installation ships no bundled model")
                + "; pass the path of an .onnx written by `ferkit export` instead"
            )
    p = Path(model)
    if not p.exists():
        raise FerkitError(f"model file not found: {p}; pass an .onnx written by `ferkit export` or a bundled name")
    if p.is_dir():
        raise FerkitError(
            f"{p} is a directory; the runtime needs an .onnx file (export a run with `ferkit export {p} --out model.onnx`)"
        )
    return p


def parse_metadata(raw: dict[str, str], source: str = "model") -> dict[str, Any]:
    """ONNX ``metadata_props`` (str -> str) -> ferkit metadata: ``ferkit_*`` keys JSON-decoded, prefix dropped.

    Raises FerkitError when the ferkit keys are missing (not a ferkit model) or malformed.
    """
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise FerkitError(
            f"{source} is an ONNX model but not one exported by ferkit (missing metadata {', '.join(missing)}); "
            "export a trained run with `ferkit export RUN_DIR --out model.onnx`"
        )
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if not key.startswith("ferkit_"):
            continue
        try:
            meta[key[len("ferkit_"):]] = json.loads(value)
        except json.JSONDecodeError:
            raise FerkitError(f"{source} has malformed ferkit metadata {key!r} (not JSON); re-export the model") from None
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise FerkitError(f"{source} has malformed ferkit_labels (expected a non-empty list of names)")
    if not isinstance(meta.get("preprocess"), dict):
        raise FerkitError(f"{source} has malformed ferkit_preprocess (expected an object)")
    return meta


def _default_threads() -> int:
    env = os.environ.get("FERKIT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise FerkitError(f"FERKIT_THREADS must be an integer, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_faces(faces) -> np.ndarray | list[np.ndarray]:
    """Validate classifier input: uint8 (N, H, W), or a sequence of uint8 crops (H, W) / (H, W, 3|4) (BGR[A]).

    Returns the array or a list. Raises FerkitError on anything else, saying what was expected.
    """
    if isinstance(faces, np.ndarray):
        if faces.dtype != np.uint8:
            raise FerkitError(
                f"faces must be uint8 gray images (0..255), got dtype {faces.dtype}; "
                "convert with np.clip(x, 0, 255).astype(np.uint8) (or (x * 255) for images in 0..1)"
            )
        if faces.ndim == 2:
            raise FerkitError(f"faces must be a batch (N, H, W); got one 2-D image {faces.shape}: pass faces[None]")
        if faces.ndim != 3:
            raise FerkitError(
                f"faces must be a uint8 array (N, H, W) of gray crops or a list of 2-D crops, got shape {faces.shape}"
            )
        if faces.shape[1] == 0 or faces.shape[2] == 0:
            raise FerkitError(f"faces have an empty size {faces.shape[1:]}")
        return faces
    if isinstance(faces, (str, bytes, os.PathLike)) or not isinstance(faces, Sequence):
        raise FerkitError(
            f"faces must be a uint8 array (N, H, W) or a list of 2-D uint8 crops, got {type(faces).__name__}"
        )
    out = []
    for i, f in enumerate(faces):
        if not isinstance(f, np.ndarray):
            raise FerkitError(f"face {i} is a {type(f).__name__}, expected a numpy uint8 array (H, W)")
        if f.dtype != np.uint8:
            raise FerkitError(f"face {i} has dtype {f.dtype}, expected uint8 (0..255)")
        if not (f.ndim == 2 or (f.ndim == 3 and f.shape[2] in (1, 3, 4))):
            raise FerkitError(f"face {i} has shape {f.shape}, expected a 2-D gray crop (H, W)")
        if f.shape[0] == 0 or f.shape[1] == 0:
            raise FerkitError(f"face {i} is empty (shape {f.shape})")
        out.append(f)
    return out


def batched_predict(
    forward: Callable[[np.ndarray], np.ndarray],
    faces,
    spec: PreprocessSpec,
    *,
    tta: str = "none",
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_logits: bool = False,
    progress: bool = False,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The one inference loop (used by :class:`EmotionClassifier` and by ``ferkit.evaluate`` for torch too).

    faces -> :func:`prepare_faces` (in batches of ``batch_size``) -> ``forward`` (N, 1, S, S) -> logits (N, C)
    -> softmax, averaged over the TTA views -> temperature (:func:`ferkit.metrics.scale_temperature` of the
    averaged rows, which never changes a row's top class). Returns (probs float32 (N, C), logits float32
    (N, C) or None); logits (divided by the temperature) are kept only when ``keep_logits`` and ``tta == 'none'``.
    """
    tta = normalize_tta(tta)
    if batch_size < 1:
        raise FerkitError(f"batch_size must be at least 1, got {batch_size}")
    n = len(faces)
    probs_parts, logit_parts = [], []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, total=(n + batch_size - 1) // batch_size, desc="predict", unit="batch", leave=False)
    for lo in starts:
        x = prepare_faces(faces[lo:lo + batch_size], spec)
        if tta == "none":
            logits = np.asarray(forward(x), dtype=np.float32)
            probs_parts.append(softmax(logits))
            if keep_logits:
                logit_parts.append(logits)
        else:
            probs_parts.append(predict_proba_tta(forward, x, tta))
    if not probs_parts:
        return np.zeros((0, 0), np.float32), None
    probs = np.concatenate(probs_parts)
    logits = np.concatenate(logit_parts) if logit_parts else None
    if temperature != 1.0:
        probs = scale_temperature(probs, temperature)
        if logits is not None:
            logits = (logits / np.float32(temperature)).astype(np.float32)
    return probs, logits


def check_temperature(value, source: str = "temperature") -> float:
    """A positive finite number (or None -> 1.0, no scaling); FerkitError otherwise."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise FerkitError(f"{source} must be a positive number, got {value!r}")
    return float(value)


class EmotionClassifier:
    """Emotion probabilities for face crops, from an ONNX model exported by ferkit.

    model: None or ``'default'`` (the bundled default model), another bundled name (e.g. ``'accurate'``),
        or the path of an ``.onnx`` written by ``ferkit export``.
    threads: onnxruntime intra-op threads (default: the CPUs this process may use, or ``$FERKIT_THREADS``).
    tta: test-time augmentation, ``None`` = the model's own default (metadata ``ferkit_tta``), or
        ``'none'``/``False``, ``'flip'``, ``'tencrop'``/``True`` (see :mod:`ferkit.tta`).
    batch_size: faces per onnxruntime call (bounds memory for long lists).
    temperature: scale the probabilities by this temperature, ``None`` = the model's own (metadata
        ``ferkit_temperature``, written by ``ferkit export MODEL --calibrate``; 1.0 when absent), ``1.0`` = the
        network's raw softmax. It changes how sure the probabilities are, never which class is on top.

    Attributes: ``labels`` (tuple of names, the order of the probability columns), ``spec``
    (PreprocessSpec), ``metadata`` (all ferkit metadata, JSON-decoded), ``tta``, ``temperature``, ``path``,
    ``input_size``.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, threads: int | None = None, tta=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, temperature: float | None = None):
        import onnxruntime as ort

        self.path = resolve_model_path(model)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise FerkitError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads or _default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        # no busy-waiting between calls: spinning threads steal the CPU from the face detector (its own
        # OpenMP pool) and from video decoding on a 2-core machine (benchmarks/bench_inference.py)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises InvalidProtobuf / Fail / ... for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FerkitError(
                f"cannot load {self.path} as an ONNX model ({first}); is it a complete .onnx written by `ferkit export`?"
            ) from None
        raw = dict(self._session.get_modelmeta().custom_metadata_map)
        self.metadata = parse_metadata(raw, source=str(self.path))
        self.labels: tuple[str, ...] = tuple(self.metadata["labels"])
        try:
            self.spec = PreprocessSpec.from_dict(self.metadata["preprocess"])
        except (TypeError, FerkitError) as e:
            raise FerkitError(f"{self.path} has unusable preprocessing metadata: {e}") from None
        self.input_size = int(self.metadata.get("input_size") or self.spec.size)
        if self.input_size != self.spec.size:
            raise FerkitError(f"{self.path}: metadata input size {self.input_size} != preprocessing size {self.spec.size}")
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise FerkitError(f"{self.path}: expected one (N, 1, H, W) input, found {[(i.name, i.shape) for i in inputs]}")
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        c = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(c, int) and c != len(self.labels):
            raise FerkitError(f"{self.path}: the model has {c} outputs but its metadata names {len(self.labels)} labels")
        self.default_tta = normalize_tta(self.metadata.get("tta"))
        self.tta = self.default_tta if tta is None else normalize_tta(tta)
        self.default_temperature = check_temperature(self.metadata.get("temperature"),
                                                     f"{self.path}: ferkit_temperature")
        self.temperature = (self.default_temperature if temperature is None
                            else check_temperature(temperature))
        if batch_size < 1:
            raise FerkitError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)

    # -- properties -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def label_set(self) -> str | None:
        return self.metadata.get("label_set")

    def __repr__(self) -> str:
        return (f"EmotionClassifier({str(self.path)!r}, arch={self.metadata.get('arch')!r}, labels={list(self.labels)}, "
                f"tta={self.tta!r}, temperature={self.temperature:g}, threads={self.threads})")

    # -- inference --------------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw network call: preprocessed float32 (N, 1, S, S) -> logits float32 (N, C). No TTA."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (1, self.input_size, self.input_size):
            raise FerkitError(f"expected a preprocessed batch (N, 1, {self.input_size}, {self.input_size}), got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.num_classes), np.float32)
        return self._session.run([self._output_name], {self._input_name: x})[0]

    def predict_proba(self, faces, *, tta=None) -> np.ndarray:
        """Face crops -> float32 (N, C) softmax probabilities, columns in ``self.labels`` order.

        faces: uint8 (N, H, W) (typically (N, 48, 48)) or a list of 2-D uint8 gray crops of any size.
        tta: override this classifier's TTA for this call (None = ``self.tta``).
        """
        faces = check_faces(faces)
        if len(faces) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        mode = self.tta if tta is None else normalize_tta(tta)
        probs, _ = batched_predict(self.forward, faces, self.spec, tta=mode, batch_size=self.batch_size,
                                   temperature=self.temperature)
        return probs

    def predict_proba_prepared(self, x: np.ndarray) -> np.ndarray:
        """An already preprocessed batch (float32 (N, 1, S, S), this model's normalisation) -> float32 (N, C)
        probabilities: the same steps as :meth:`predict_proba` after preprocessing (softmax, averaged over this
        classifier's TTA views, then its temperature). For callers that prepare or augment faces themselves
        (consistent distillation, :class:`ferkit.distill.ConsistentTeacher`)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        probs = (softmax(np.asarray(self.forward(x), np.float32)) if self.tta == "none"
                 else predict_proba_tta(self.forward, x, self.tta))
        return scale_temperature(probs, self.temperature) if self.temperature != 1.0 else probs

    def predict_logits(self, faces) -> np.ndarray:
        """Face crops -> float32 (N, C) logits (no TTA, no softmax), divided by ``self.temperature``."""
        faces = check_faces(faces)
        if len(faces) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        _, logits = batched_predict(self.forward, faces, self.spec, tta="none", batch_size=self.batch_size,
                                    keep_logits=True, temperature=self.temperature)
        return logits

    def predict(self, faces, *, tta=None) -> np.ndarray:
        """Face crops -> int64 (N,) indices into ``self.labels`` (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(faces, tta=tta).argmax(axis=1).astype(np.int64)

    def predict_labels(self, faces, *, tta=None) -> list[str]:
        """Face crops -> the label name of each."""
        return [self.labels[i] for i in self.predict(faces, tta=tta)]

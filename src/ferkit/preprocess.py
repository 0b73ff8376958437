"""The one face-crop -> network-input function, used by training and inference alike.

Train/serve skew (a model trained with one normalisation and served with another) is the most common
silent bug in this field, so every path that feeds a network goes through :func:`prepare_faces`, and the
:class:`PreprocessSpec` travels with the model (checkpoint and ONNX metadata).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import cv2
import numpy as np

from .errors import FerkitError


@dataclass(frozen=True)
class PreprocessSpec:
    """How a grayscale face crop becomes the network input.

    Steps, in order: resize to ``size`` x ``size`` (area interpolation), optional histogram equalisation,
    optional gamma correction, optional Gaussian smoothing, then ``(pixel / 255 - mean) / std``.
    """

    size: int = 48
    mean: float = 0.5
    std: float = 0.25
    equalize: bool = False
    gamma: float = 1.0
    blur_sigma: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PreprocessSpec":
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FerkitError(f"unknown preprocessing options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


DEFAULT_SPEC = PreprocessSpec()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any image array -> uint8 of the same shape, by its values' range:

    - floats: 0..1 when the largest value is at most 1 (scaled by 255), else already 0..255 (as from
      ``img.astype(np.float32)``); NaN counts as 0;
    - integers (uint16, int32, ...): 8-bit values when none exceeds 255, else 16-bit ones (divided by 257,
      so 65535 becomes 255);
    - booleans: 0 / 255. Out-of-range values are clipped.
    """
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if img.dtype.kind == "f":
        img = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if img.size == 0 or float(img.max()) <= 1.0 else 1.0
        return np.clip(img * scale + 0.5, 0, 255).astype(np.uint8)
    if img.size and int(img.max()) > 255:
        return np.clip(img.astype(np.float32) / 257.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any image array (gray, BGR, BGRA; any dtype, see :func:`to_uint8`) -> 2-D uint8 grayscale.

    Colour arrays are taken to be in OpenCV's BGR(A) order.
    """
    img = to_uint8(image)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    raise FerkitError(f"expected a gray, BGR or BGRA image, got an array of shape {img.shape}")


def _filter(face: np.ndarray, spec: PreprocessSpec, lut: np.ndarray | None) -> np.ndarray:
    if face.shape != (spec.size, spec.size):
        interp = cv2.INTER_AREA if min(face.shape) >= spec.size else cv2.INTER_LINEAR
        face = cv2.resize(face, (spec.size, spec.size), interpolation=interp)
    if spec.equalize:
        face = cv2.equalizeHist(face)
    if lut is not None:
        face = cv2.LUT(face, lut)
    if spec.blur_sigma > 0:
        face = cv2.GaussianBlur(face, (0, 0), spec.blur_sigma)
    return face


def prepare_faces(
    faces: np.ndarray | Iterable[np.ndarray], spec: PreprocessSpec = DEFAULT_SPEC
) -> np.ndarray:
    """Grayscale face crops -> float32 network input of shape (N, 1, size, size).

    ``faces`` is a uint8 array (N, H, W), or a sequence of 2-D crops of any size (colour crops are
    converted to gray). Crops that are not ``size`` x ``size`` are resized.
    """
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        raise FerkitError("prepare_faces expects a batch (N, H, W); wrap a single face as faces[None]")
    simple = (
        isinstance(faces, np.ndarray)
        and faces.ndim == 3
        and faces.dtype == np.uint8
        and faces.shape[1:] == (spec.size, spec.size)
        and not spec.equalize
        and spec.gamma == 1.0
        and spec.blur_sigma <= 0
    )
    if simple:
        batch = faces
    else:
        lut = None
        if spec.gamma != 1.0:
            if spec.gamma <= 0:
                raise FerkitError(f"gamma must be positive, got {spec.gamma}")
            lut = np.clip(((np.arange(256) / 255.0) ** (1.0 / spec.gamma)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        crops = [_filter(to_gray(f), spec, lut) for f in faces]
        if not crops:
            return np.zeros((0, 1, spec.size, spec.size), np.float32)
        batch = np.stack(crops)
    out = batch.astype(np.float32)
    out *= 1.0 / (255.0 * spec.std)
    out -= spec.mean / spec.std
    return out[:, None, :, :]

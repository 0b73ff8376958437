"""Obfuscation of image regions: pixelation (mosaic), Gaussian blur and a filled box.

These are the exact operations behind both ``ferkit anonymize`` (hiding faces in photos and videos) and the
``ferkit privacy-report`` experiment (how much a network still reads from obfuscated FER2013 faces), so
what the report measures is what the tool does.

Strength means, per method:

- ``pixelate``: the mosaic cell size in pixels of the region (``2`` = 2x2 blocks). Each cell is replaced by
  the mean of its pixels (cells at the right/bottom edge may be smaller). For regions of different sizes,
  :func:`strength_for_region` can scale a strength given for a 48-pixel face.
- ``blur``: the Gaussian sigma in pixels; the kernel spans +-3 sigma.
- ``fill``: the grey value 0..255 the region is filled with (default 0, a black box).

Images are ``uint8`` arrays, grey ``(H, W)`` or colour ``(H, W, C)``; boxes are ``(x, y, w, h)`` in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..errors import FerkitError

METHODS = ("pixelate", "blur", "fill")
DEFAULT_STRENGTH = {"pixelate": 8.0, "blur": 4.0, "fill": 0.0}


@dataclass(frozen=True)
class Obfuscation:
    """A method and its strength (see the module docstring for the unit of each)."""

    method: str
    strength: float

    def __post_init__(self):
        check_method(self.method, self.strength)

    @property
    def name(self) -> str:
        """Short label, e.g. ``pixelate-8``, ``blur-4``, ``fill``."""
        if self.method == "fill":
            return "fill" if self.strength == 0 else f"fill-{self.strength:g}"
        return f"{self.method}-{self.strength:g}"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return obfuscate(image, self.method, self.strength)


def check_method(method: str, strength: float) -> None:
    if method not in METHODS:
        raise FerkitError(f"unknown obfuscation method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise FerkitError(f"{method} strength must be a number, got {strength!r}") from None
    if not np.isfinite(strength):
        raise FerkitError(f"{method} strength must be finite, got {strength}")
    if method == "pixelate" and strength < 1:
        raise FerkitError(f"pixelate strength is the mosaic cell size in pixels (>= 1), got {strength:g}")
    if method == "blur" and strength <= 0:
        raise FerkitError(f"blur strength is the Gaussian sigma in pixels (> 0), got {strength:g}")
    if method == "fill" and not 0 <= strength <= 255:
        raise FerkitError(f"fill strength is a grey value 0..255, got {strength:g}")


def parse_obfuscation(spec: str) -> Obfuscation:
    """``"pixelate-8"``, ``"blur-4"``, ``"fill"`` or ``"pixelate:8"`` -> :class:`Obfuscation`."""
    text = spec.strip().lower()
    for sep in ("-", ":", "="):
        if sep in text:
            method, _, value = text.partition(sep)
            try:
                return Obfuscation(method, float(value))
            except ValueError:
                raise FerkitError(f"bad obfuscation {spec!r}: strength {value!r} is not a number") from None
    if text in METHODS:
        return Obfuscation(text, DEFAULT_STRENGTH[text])
    raise FerkitError(f"bad obfuscation {spec!r}; write e.g. pixelate-8, blur-4 or fill")


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise FerkitError(f"obfuscation needs a uint8 image, got {image.dtype}")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise FerkitError(f"obfuscation needs an (H, W) or (H, W, C) image, got shape {image.shape}")
    return image


#: the least mosaic cell and blur sigma (pixels) that change a face: what the anonymizer applies at the least
MIN_CELL = 2.0
MIN_SIGMA = 0.5
#: a blur wider than this is computed on a copy downscaled by sigma / BLUR_DIRECT_SIGMA (the same look, at a
#: cost that does not grow with sigma: sigma 1,500 took 127 s at full size)
BLUR_DIRECT_SIGMA = 8.0


def pixelate(image: np.ndarray, cell: float) -> np.ndarray:
    """Mosaic: every ``cell`` x ``cell`` block becomes the (rounded) mean of its pixels (a cell larger than the
    image is the image: one block)."""
    image = _as_uint8(image)
    check_method("pixelate", cell)
    c = max(1, min(int(round(cell)), max(image.shape[:2])))
    if c == 1:
        return image.copy()
    h, w = image.shape[:2]
    ny, nx = -(-h // c), -(-w // c)
    pad = [(0, ny * c - h), (0, nx * c - w)] + [(0, 0)] * (image.ndim - 2)
    # Padding values are excluded from the means by dividing by the true counts.
    f = np.pad(image.astype(np.float32), pad)
    ones = np.pad(np.ones((h, w), np.float32), pad[:2])
    shape = (ny, c, nx, c) + image.shape[2:]
    sums = f.reshape(shape).sum(axis=(1, 3))
    counts = ones.reshape(ny, c, nx, c).sum(axis=(1, 3))
    if image.ndim == 3:
        counts = counts[..., None]
    means = np.rint(sums / counts).clip(0, 255).astype(np.uint8)
    out = np.repeat(np.repeat(means, c, axis=0), c, axis=1)[:h, :w]
    return np.ascontiguousarray(out)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel of +-3 sigma, reflected borders). Sigma is
    capped at the image's larger side (beyond it the result is flat anyway); above ``BLUR_DIRECT_SIGMA`` the
    blur runs on a copy downscaled to keep sigma at that value, then is scaled back."""
    image = _as_uint8(image)
    check_method("blur", sigma)
    h, w = image.shape[:2]
    sigma = min(float(sigma), float(max(h, w)))
    work, factor = image, 1.0
    if sigma > BLUR_DIRECT_SIGMA:
        factor = sigma / BLUR_DIRECT_SIGMA
        size = (max(1, int(round(w / factor))), max(1, int(round(h / factor))))
        work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    s = sigma / factor
    k = 2 * int(np.ceil(3 * s)) + 1
    out = cv2.GaussianBlur(work, (k, k), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT_101)
    if factor != 1.0:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(image.shape)  # OpenCV drops a single channel axis


def fill(image: np.ndarray, value: float = 0) -> np.ndarray:
    """A box of one grey value (0 = black): nothing of the original is left. A 4th (alpha) channel is made
    opaque, so the box shows as a box."""
    image = _as_uint8(image)
    check_method("fill", value)
    out = np.full_like(image, int(round(float(value))))
    if image.ndim == 3 and image.shape[2] == 4:
        out[..., 3] = 255
    return out


_FUNCS = {"pixelate": pixelate, "blur": blur, "fill": fill}


def obfuscate(image: np.ndarray, method: str, strength: float | None = None) -> np.ndarray:
    """Obfuscate a whole image (a face crop). Returns a new array; the input is not changed."""
    check_method(method, DEFAULT_STRENGTH.get(method, 0) if strength is None else strength)
    return _FUNCS[method](image, DEFAULT_STRENGTH[method] if strength is None else float(strength))


def obfuscate_batch(faces: np.ndarray, method: str, strength: float | None = None) -> np.ndarray:
    """Obfuscate each image of an ``(N, H, W)`` or ``(N, H, W, C)`` uint8 stack."""
    faces = np.asarray(faces)
    if faces.ndim < 3:
        raise FerkitError(f"obfuscate_batch needs a stack of images (N, H, W[, C]), got shape {faces.shape}")
    if len(faces) == 0:
        return faces.copy()
    if method == "pixelate" and faces.dtype == np.uint8:
        # Vectorised: treat the batch as channels of one image.
        n = faces.shape[0]
        moved = np.moveaxis(faces.reshape(n, faces.shape[1], faces.shape[2], -1), 0, -1)
        flat = moved.reshape(faces.shape[1], faces.shape[2], -1)
        out = pixelate(flat, DEFAULT_STRENGTH[method] if strength is None else strength)
        out = np.moveaxis(out.reshape(moved.shape), -1, 0).reshape(faces.shape)
        return np.ascontiguousarray(out)
    return np.stack([obfuscate(f, method, strength) for f in faces])


def strength_for_region(method: str, strength: float, region_size: float, reference: float = 48.0) -> float:
    """Scale a strength given for a ``reference``-pixel face (FER2013's 48) to a face ``region_size`` pixels
    across, so that e.g. ``pixelate 8`` leaves the same 6 cells across a face of any size. ``fill`` is not
    scaled."""
    check_method(method, strength)
    if method == "fill":
        return float(strength)
    scaled = float(strength) * float(region_size) / float(reference)
    return max(MIN_CELL, scaled) if method == "pixelate" else max(MIN_SIGMA, scaled)


def obfuscate_region(image: np.ndarray, box: Sequence[float], method: str, strength: float) -> tuple[int, int, int, int] | None:
    """Obfuscate ``box`` = (x, y, w, h) of ``image`` in place, clipped to the image.

    Returns the clipped box that was changed, or None when the box lies entirely outside the image.
    """
    image = _as_uint8(image)
    check_method(method, strength)
    h, w = image.shape[:2]
    x, y, bw, bh = (float(v) for v in box)
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = min(w, int(np.ceil(x + bw))), min(h, int(np.ceil(y + bh)))
    if x1 <= x0 or y1 <= y0:
        return None
    region = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = obfuscate(np.ascontiguousarray(region), method, strength)
    return (x0, y0, x1 - x0, y1 - y0)

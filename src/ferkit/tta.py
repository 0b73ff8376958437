"""Test-time augmentation (TTA) in numpy, shared by ``ferkit.evaluate`` and ``ferkit.runtime`` (no torch).

TTA works on the *preprocessed* batch, float32 (N, 1, S, S) from :func:`ferkit.preprocess.prepare_faces`,
so it composes with the one preprocessing path instead of replacing it. Modes:

``none``
    one view: the batch itself.
``flip``
    2 views: the batch and its horizontal mirror.
``tencrop``
    10 views: five square crops of side ``C = round(S * 11 / 12)`` (44 px for S = 48), taken at the four
    corners and the centre, each resized back to S x S with bilinear interpolation, plus the horizontal
    mirror of each. The crops are resized back (rather than fed at C x C or zero-padded back) because every
    ferkit architecture takes a fixed S x S input, and resizing keeps all of the crop's face content with
    no artificial border; the result is a 2-pixel shift plus a 9% zoom, within the range of ferkit's
    training augmentation (random shift/scale/flip).

The model's softmax probabilities are averaged over the views (not the logits), view by view, so the
peak memory is that of one plain batch. Whether a model uses TTA by default is a property of the model
(``ferkit_tta`` in the ONNX metadata), so ``ferkit.analyze`` and the model card report the same thing.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import FerkitError
from .metrics import softmax

TTA_MODES: dict[str, int] = {"none": 1, "flip": 2, "tencrop": 10}  # mode -> number of views


def normalize_tta(tta) -> str:
    """None/False/'none'/'' -> 'none'; True -> 'tencrop'; a mode name -> itself (validated)."""
    if tta is None or tta is False or tta == "" or tta == "none":
        return "none"
    if tta is True:
        return "tencrop"
    if isinstance(tta, str) and tta.lower() in TTA_MODES:
        return tta.lower()
    raise FerkitError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")


def crop_size(size: int) -> int:
    """Side in pixels of the ten-crop crops for an S x S input (44 for 48)."""
    return max(1, int(round(size * 11 / 12)))


def _linear_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32 matrix of OpenCV's INTER_LINEAR along one axis (pixel centres at +0.5, edges
    clamped), so that ``W @ row`` resizes a row of ``src`` pixels to ``dst``."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    frac[lo < 0] = 0.0
    lo = np.clip(lo, 0, src - 1)
    frac[lo >= src - 1] = 0.0
    hi = np.minimum(lo + 1, src - 1)
    w = np.zeros((dst, src), np.float64)
    rows = np.arange(dst)
    np.add.at(w, (rows, lo), 1.0 - frac)
    np.add.at(w, (rows, hi), frac)
    return w.astype(np.float32)


def _resize_stack(imgs: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) float32 -> (N, size, size), bilinear as OpenCV's INTER_LINEAR, all N images at once as two
    matrix products (no cv2 call: OpenCV 5 no longer takes hundreds of images as the channels of one)."""
    ry = _linear_weights(imgs.shape[1], size)
    rx = _linear_weights(imgs.shape[2], size)
    return np.ascontiguousarray(ry @ imgs.astype(np.float32, copy=False) @ rx.T, dtype=np.float32)


def tta_views(x: np.ndarray, mode: str):
    """Yield the views of a preprocessed batch ``x`` (N, 1, S, S) float32, each (N, 1, S, S) float32."""
    mode = normalize_tta(mode)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise FerkitError(f"TTA expects a preprocessed batch (N, 1, S, S), got shape {x.shape}")
    if mode == "none":
        yield x
        return
    if mode == "flip":
        yield x
        yield np.ascontiguousarray(x[..., ::-1])
        return
    s = x.shape[-1]
    c = crop_size(s)
    d = s - c
    m = d // 2
    imgs = x[:, 0]
    for top, left in ((0, 0), (0, d), (d, 0), (d, d), (m, m)):  # 4 corners, then the centre
        view = _resize_stack(imgs[:, top:top + c, left:left + c], s)[:, None]
        yield view
        yield np.ascontiguousarray(view[..., ::-1])


def predict_proba_tta(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray, mode: str) -> np.ndarray:
    """Mean softmax probabilities over the TTA views of ``x``; ``forward`` maps (N, 1, S, S) -> logits (N, C)."""
    total = None
    n = 0
    for view in tta_views(x, mode):
        p = softmax(forward(view)).astype(np.float64)
        total = p if total is None else total + p
        n += 1
    return (total / n).astype(np.float32)

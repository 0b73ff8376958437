"""Data augmentation on batches of tensors, written without torchvision (needs torch).

Every function takes a float batch ``x`` of shape (N, C, H, W) (already normalised by
``ferkit.preprocess.prepare_faces``; 0 is the mean gray) and a CPU ``torch.Generator``. All random
numbers are drawn from that generator on the CPU and only then moved to ``x``'s device, so a seeded
run augments identically on CPU and GPU and its generator state can be saved and restored (resume). On a
GPU they travel through pinned memory without blocking (:func:`_to`): a plain copy from pageable memory
makes the CPU wait for the kernels queued before it. (On an H200, 2026-12-04, the 'heavy' preset added
5.9 ms to a 7.2 ms vgg step at batch 64 although it took 2.0 ms on its own:
docs/bench_train_step_h200.txt. The pinned copies came after that measurement and are not yet timed there.)

Steps of :class:`Augmenter` in order: photometric jitter (brightness, contrast, gamma, sharpness, sensor
noise; on pixel intensities, so the augmenter is told the normalisation's mean and std), horizontal flip,
random crop (pad + crop, integer pixels), one random affine warp (rotation, scale, shift) through
``affine_grid``/``grid_sample``, random erasing.
Mixup and CutMix (:func:`mix_batch`) act on a batch *and its targets* and are applied by the training
loop after the per-image steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FerkitError

PADDING_MODES = ("zeros", "border", "reflection")
PHOTOMETRIC = ("brightness", "contrast", "gamma", "sharpness", "noise")


@dataclass
class AugmentConfig:
    """What to randomise. All zero / False means no augmentation.

    flip: mirror left-right with probability 0.5.
    crop: pad each side by ``crop`` pixels (reflect) and take a random ``H x W`` window (integer shifts).
    shift: maximum affine translation as a fraction of the image side (0.1 = up to 4.8 px on 48 px).
    scale: zoom factor drawn uniformly in ``[1 - scale, 1 + scale]`` (>1 magnifies).
    rotate: maximum rotation in degrees (uniform in ``[-rotate, rotate]``).
    padding: how the affine warp fills pixels from outside the image (zeros = mean gray, border, reflection).
    erase: probability of random erasing per image; the erased box covers ``erase_area`` (fractions of
        the image area) with aspect ratio in ``[0.3, 3.3]`` and is filled with 0 (mean gray) or noise.
    mixup / cutmix: Beta(alpha, alpha) parameters; 0 disables. When both are on, each batch uses one
        of them at random (probability 0.5 each).

    Photometric jitter (meant to make FER2013's web crops look more like other cameras and lighting), each
    drawn per image on intensities in [0, 1] and clipped back to that range:
    brightness: add a value uniform in ``[-brightness, brightness]``.
    contrast: scale the deviation from the image's mean by a factor uniform in ``[1 - contrast, 1 + contrast]``.
    gamma: raise to the power ``exp(u)``, ``u`` uniform in ``[-gamma, gamma]`` (0.3: exponents 0.74 to 1.35).
    sharpness: unsharp mask ``x + a * (x - gaussian_blur(x, sigma=1))`` with ``a`` uniform in
        ``[-sharpness, sharpness]``; ``a = -1`` is a full blur, ``a > 0`` sharpens.
    noise: add Gaussian noise whose standard deviation is uniform in ``[0, noise]``.
    """

    flip: bool = False
    crop: int = 0
    shift: float = 0.0
    scale: float = 0.0
    rotate: float = 0.0
    padding: str = "reflection"
    erase: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.2)
    erase_fill: str = "zero"
    mixup: float = 0.0
    cutmix: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    sharpness: float = 0.0
    noise: float = 0.0

    def __post_init__(self):
        self.erase_area = tuple(float(a) for a in self.erase_area)
        if self.crop < 0 or self.shift < 0 or self.rotate < 0 or not 0 <= self.scale < 1:
            raise FerkitError("augmentation: crop, shift and rotate must be >= 0 and scale in [0, 1)")
        if not 0 <= self.erase <= 1:
            raise FerkitError(f"augmentation: erase is a probability in [0, 1], got {self.erase}")
        lo, hi = self.erase_area
        if not 0 < lo <= hi < 1:
            raise FerkitError(f"augmentation: erase_area must satisfy 0 < lo <= hi < 1, got {self.erase_area}")
        if self.padding not in PADDING_MODES:
            raise FerkitError(f"augmentation: padding must be one of {', '.join(PADDING_MODES)}, got {self.padding!r}")
        if self.erase_fill not in ("zero", "noise"):
            raise FerkitError(f"augmentation: erase_fill must be 'zero' or 'noise', got {self.erase_fill!r}")
        if self.mixup < 0 or self.cutmix < 0:
            raise FerkitError("augmentation: mixup and cutmix alphas must be >= 0")
        for name in PHOTOMETRIC:
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise FerkitError(f"augmentation: {name} must be a number >= 0, got {v}")
        if self.contrast > 1:
            raise FerkitError(f"augmentation: contrast must be in [0, 1], got {self.contrast}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["erase_area"] = list(self.erase_area)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AugmentConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FerkitError(f"unknown augmentation options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @property
    def any_photometric_op(self) -> bool:
        return any(getattr(self, name) for name in PHOTOMETRIC)

    @property
    def any_image_op(self) -> bool:
        return bool(self.flip or self.crop or self.shift or self.scale or self.rotate or self.erase
                    or self.any_photometric_op)


# Named presets for --augment; individual flags override their fields.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"flip": True, "crop": 3},
    "standard": {"flip": True, "shift": 0.1, "scale": 0.1, "rotate": 10.0, "erase": 0.25},
    "heavy": {"flip": True, "shift": 0.15, "scale": 0.2, "rotate": 15.0, "erase": 0.5, "erase_fill": "noise"},
}
# 'standard' plus photometric jitter: lighting, exposure, focus and sensor noise of other cameras
AUGMENT_PRESETS["photo"] = {**AUGMENT_PRESETS["standard"],
                            "brightness": 0.15, "contrast": 0.3, "gamma": 0.3, "sharpness": 1.0, "noise": 0.03}


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _to(t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` (drawn on the CPU) on ``like``'s device, as ``dtype`` if given. To a CUDA device the copy goes
    through pinned memory and does not block: PyTorch keeps the pinned block until the copy has run."""
    if dtype is not None:
        t = t.to(dtype)
    if like.device.type != "cuda":
        return t.to(like.device)
    return t.pin_memory().to(like.device, non_blocking=True)


def random_flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    mask = _to(torch.rand(x.shape[0], generator=gen) < p, x)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Pad each side by ``pad`` pixels (reflect) and cut a random window of the original size per image."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    if pad >= min(h, w):
        raise FerkitError(f"crop padding {pad} must be smaller than the image side {min(h, w)}")
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = _to(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x)
    ox = _to(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H) row in the padded image
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_affine(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    rotate: float = 0.0,
    scale: float = 0.0,
    shift: float = 0.0,
    padding: str = "reflection",
) -> torch.Tensor:
    """One bilinear warp per image: rotation (degrees), zoom in ``[1-scale, 1+scale]``, translation
    up to ``shift`` of the side. Built as a (N, 2, 3) matrix in normalised [-1, 1] coordinates (x, y)
    that maps each output pixel to its source position, then ``affine_grid`` + ``grid_sample``."""
    n = x.shape[0]
    angle = _uniform(gen, n, -rotate, rotate) * (math.pi / 180.0)
    zoom = _uniform(gen, n, 1.0 - scale, 1.0 + scale)
    tx = _uniform(gen, n, -2.0 * shift, 2.0 * shift)  # normalised coords span 2 per image side
    ty = _uniform(gen, n, -2.0 * shift, 2.0 * shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = _to(theta, x, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def random_erasing(
    x: torch.Tensor,
    gen: torch.Generator,
    p: float,
    area: tuple[float, float] = (0.02, 0.2),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: str = "zero",
) -> torch.Tensor:
    """With probability ``p`` per image, overwrite one random rectangle (area fraction in ``area``,
    height/width ratio log-uniform in ``ratio``) with 0 (the mean gray) or standard-normal noise."""
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=gen) < p
    frac = _uniform(gen, n, *area)
    aspect = torch.exp(_uniform(gen, n, math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(frac * h * w * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(frac * h * w / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, generator=gen, dtype=torch.float64) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=gen, dtype=torch.float64) * (w - ew + 1)).long()
    ys = torch.arange(h)[None, :]
    xs = torch.arange(w)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (N, H)
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (N, W)
    mask = _to((in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None], x)
    if fill == "noise":
        value = _to(torch.randn(x.shape, generator=gen), x, x.dtype)
    else:
        value = torch.zeros((), device=x.device, dtype=x.dtype)
    return torch.where(mask, value, x)


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of every channel (reflect padding), radius ``ceil(2 * sigma)``."""
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = _to(k / k.sum(), x, x.dtype)
    n, c, h, w = x.shape
    y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def photometric_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    gamma: float = 0.0,
    sharpness: float = 0.0,
    noise: float = 0.0,
    mean: float = 0.5,
    std: float = 0.25,
) -> torch.Tensor:
    """Brightness, contrast, gamma, sharpness and noise jitter (see :class:`AugmentConfig`) on a batch
    normalised as ``(intensity - mean) / std``: converted to intensities in [0, 1], jittered per image,
    clipped to [0, 1] and normalised back. Only the enabled steps draw random numbers."""
    n = x.shape[0]

    def per_image(lo: float, hi: float) -> torch.Tensor:
        return _to(_uniform(gen, n, lo, hi), x, x.dtype)[:, None, None, None]

    v = (x * std + mean).clamp(0.0, 1.0)
    if brightness:
        v = (v + per_image(-brightness, brightness)).clamp(0.0, 1.0)
    if contrast:
        m = v.mean(dim=(1, 2, 3), keepdim=True)
        v = ((v - m) * per_image(1.0 - contrast, 1.0 + contrast) + m).clamp(0.0, 1.0)
    if gamma:
        v = v.clamp_min(1e-6) ** torch.exp(per_image(-gamma, gamma))
    if sharpness:
        v = (v + per_image(-sharpness, sharpness) * (v - _gaussian_blur(v))).clamp(0.0, 1.0)
    if noise:
        sigma = per_image(0.0, noise)
        v = (v + sigma * _to(torch.randn(x.shape, generator=gen), x, x.dtype)).clamp(0.0, 1.0)
    return (v - mean) / std


class Augmenter:
    """Applies an :class:`AugmentConfig`'s per-image steps to a batch: ``x = Augmenter(cfg)(x, gen)``.

    ``mean`` and ``std`` are the normalisation of the batch (``PreprocessSpec.mean``/``std``); only the
    photometric steps need them."""

    def __init__(self, config: AugmentConfig, mean: float = 0.5, std: float = 0.25):
        self.config = config
        self.mean, self.std = float(mean), float(std)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        if c.any_photometric_op:
            x = photometric_jitter(x, gen, brightness=c.brightness, contrast=c.contrast, gamma=c.gamma,
                                   sharpness=c.sharpness, noise=c.noise, mean=self.mean, std=self.std)
        if c.flip:
            x = random_flip(x, gen)
        if c.crop:
            x = random_crop(x, gen, c.crop)
        if c.rotate or c.scale or c.shift:
            x = random_affine(x, gen, rotate=c.rotate, scale=c.scale, shift=c.shift, padding=c.padding)
        if c.erase:
            x = random_erasing(x, gen, c.erase, c.erase_area, fill=c.erase_fill)
        return x


def _beta(gen: torch.Generator, alpha: float) -> float:
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(
    x: torch.Tensor, target: torch.Tensor, gen: torch.Generator, mixup: float = 0.0, cutmix: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix on a batch. ``target`` holds (N, C) class probabilities; returns mixed
    ``(x, target)``. Each image is paired with a random other image of the batch; the targets are mixed
    in the proportion of the pixels (CutMix) or of the blend weight (mixup)."""
    if not (mixup or cutmix) or x.shape[0] < 2:
        return x, target
    use_cutmix = bool(cutmix) and (not mixup or bool(torch.rand(1, generator=gen) < 0.5))
    lam = _beta(gen, cutmix if use_cutmix else mixup)
    perm = _to(torch.randperm(x.shape[0], generator=gen), x)
    if use_cutmix:
        _, _, h, w = x.shape
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(round(h * cut)), int(round(w * cut))
        cy = int(torch.randint(0, h, (1,), generator=gen))
        cx = int(torch.randint(0, w, (1,), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * target + (1.0 - lam) * target[perm]

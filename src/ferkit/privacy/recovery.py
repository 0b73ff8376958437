"""De-obfuscation: a small U-Net trained to map obfuscated faces back to the originals (needs torch).

This is the attack of McPherson, Shokri and Shmatikov, "Defeating Image Obfuscation with Deep Learning"
(2016), in the form one of ferkit's source projects used: a network sees pairs (obfuscated face, original
face) from the Training split and learns to undo the obfuscation; PublicTest selects the epoch; PrivateTest
measures how much is recovered.

The network (:class:`RecoveryUNet`): an encoder of three levels (48 -> 24 -> 12 px, ``base``, 2x``base``,
4x``base`` channels, two 3x3 conv + BN + ReLU each), a bottleneck at 6 px, and a decoder that upsamples
(bilinear) and concatenates the encoder's features at each level. It predicts a correction that is added
to its input (residual learning), so an identity map costs nothing to learn. Pixels are 0..1 floats
(uint8 / 255); the loss is the mean absolute error, the figure the source project reported.

Quality measures (:func:`image_quality`), on uint8 images against the originals:

- ``mae_pct``: mean absolute pixel error in % of 255 (the source reported 2.4%, "about 96% recovered");
- ``psnr_db``: peak signal-to-noise ratio in dB (peak 255), averaged over images;
- ``ssim``: structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, population covariance),
  computed by scikit-image, averaged over images.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FerkitError


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class RecoveryUNet(nn.Module):
    """U-Net for 1-channel faces whose sides are divisible by 8; input and output are 0..1 floats
    (N, 1, H, W). ``base``: channels of the first level (16 -> about 0.49 M parameters)."""

    def __init__(self, base: int = 16):
        super().__init__()
        if base < 1:
            raise FerkitError(f"RecoveryUNet base width must be >= 1, got {base}")
        b = base
        self.enc1, self.enc2, self.enc3 = _block(1, b), _block(b, 2 * b), _block(2 * b, 4 * b)
        self.mid = _block(4 * b, 8 * b)
        self.dec3, self.dec2, self.dec1 = _block(12 * b, 4 * b), _block(6 * b, 2 * b), _block(3 * b, b)
        self.out = nn.Conv2d(b, 1, 1)
        nn.init.zeros_(self.out.weight)  # start as the identity map (the residual is zero)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([self._up(m, e3), e3], 1))
        d2 = self.dec2(torch.cat([self._up(d3, e2), e2], 1))
        d1 = self.dec1(torch.cat([self._up(d2, e1), e1], 1))
        return x + self.out(d1)


# ------------------------------------------------------------------------------------------- metrics
def image_quality(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MAE (% of 255), PSNR (dB) and SSIM of uint8 images ``pred`` vs ``target``, both (N, H, W)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim != 3:
        raise FerkitError(f"image_quality needs two (N, H, W) stacks of the same shape, got {pred.shape} and {target.shape}")
    if len(pred) == 0:
        raise FerkitError("image_quality needs at least one image")
    p, t = pred.astype(np.float64), target.astype(np.float64)
    mae = float(np.abs(p - t).mean() / 255.0 * 100.0)
    psnrs, ssims = [], []
    for a, b in zip(pred, target):
        if np.array_equal(a, b):
            psnrs.append(100.0)  # identical images: PSNR is infinite; capped so that means stay finite
        else:
            psnrs.append(float(peak_signal_noise_ratio(b, a, data_range=255)))
        ssims.append(float(structural_similarity(b, a, data_range=255, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False)))
    return {"mae_pct": mae, "psnr_db": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


# ------------------------------------------------------------------------------------------ training
@dataclass
class RecoveryResult:
    model: RecoveryUNet
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def _autocast(enabled: bool):
    import contextlib

    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _bf16_ok() -> bool:
    try:
        from ..train import _cpu_supports_bf16

        return _cpu_supports_bf16()
    except Exception:  # pragma: no cover - an old torch
        return False


def recover(model: RecoveryUNet, obfuscated: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Run the recovery network on uint8 faces (N, H, W); returns uint8 faces (N, H, W)."""
    obfuscated = np.asarray(obfuscated)
    if obfuscated.ndim != 3 or obfuscated.dtype != np.uint8:
        raise FerkitError(f"recover needs uint8 faces (N, H, W), got {obfuscated.dtype} {obfuscated.shape}")
    model.eval()
    out = np.empty_like(obfuscated)
    with torch.inference_mode():
        for lo in range(0, len(obfuscated), batch_size):
            x = _to_tensor(obfuscated[lo:lo + batch_size])
            y = model(x).float().clamp(0, 1).squeeze(1).numpy()
            out[lo:lo + batch_size] = np.rint(y * 255.0).astype(np.uint8)
    return out


def train_recovery(
    train_in: np.ndarray, train_target: np.ndarray, val_in: np.ndarray, val_target: np.ndarray, *,
    epochs: int = 4, batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4, base: int = 16,
    seed: int = 0, bf16: bool | None = None, log: Callable[[str], None] | None = print,
) -> RecoveryResult:
    """Train a :class:`RecoveryUNet` on uint8 (N, H, W) pairs with L1 loss, AdamW and a one-cycle LR;
    horizontal flips (applied to both images of a pair) augment the data. The epoch with the lowest
    validation MAE is kept. ``bf16``: autocast on the CPU (default: when the CPU supports it)."""
    for name, a, b in (("train", train_in, train_target), ("val", val_in, val_target)):
        if np.shape(a) != np.shape(b) or np.ndim(a) != 3 or len(a) == 0:
            raise FerkitError(f"{name} obfuscated/original stacks must be non-empty (N, H, W) of the same shape, "
                              f"got {np.shape(a)} and {np.shape(b)}")
    if epochs < 1:
        raise FerkitError(f"recovery training needs at least 1 epoch, got {epochs}")
    bf16 = _bf16_ok() if bf16 is None else bf16
    torch.manual_seed(seed)
    model = RecoveryUNet(base).to(memory_format=torch.channels_last)
    x_tr, y_tr = _to_tensor(train_in), _to_tensor(train_target)
    x_va, y_va = _to_tensor(val_in), _to_tensor(val_target)
    n = len(x_tr)
    steps_per_epoch = max(1, n // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, history = math.inf, None, 0, []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        te = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            xb, yb = x_tr[idx], y_tr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb).contiguous(memory_format=torch.channels_last)
            yb = torch.where(flip[:, None, None, None], yb.flip(-1), yb)
            with _autocast(bf16):
                pred = model(xb)
            loss = F.l1_loss(pred.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        with torch.inference_mode():
            errs = [F.l1_loss(model(x_va[lo:lo + 512]).float().clamp(0, 1), y_va[lo:lo + 512], reduction="sum")
                    for lo in range(0, len(x_va), 512)]
        val_mae = float(sum(errs)) / y_va.numel()
        row = {"epoch": epoch, "train_l1": total / steps_per_epoch, "val_mae_pct": 100 * val_mae,
               "seconds": time.perf_counter() - te}
        history.append(row)
        improved = val_mae < best
        if improved:
            best, best_epoch = val_mae, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if log:
            log(f"  recovery epoch {epoch}/{epochs}: train L1 {row['train_l1'] * 100:.2f}% val MAE "
                f"{row['val_mae_pct']:.2f}% {row['seconds']:.0f} s{'  *best' if improved else ''}")
    model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format).eval()
    return RecoveryResult(model=model, best_epoch=best_epoch, history=history, seconds=time.perf_counter() - t0)

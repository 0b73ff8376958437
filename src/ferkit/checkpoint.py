"""Training checkpoints: the contract between train, evaluate and export (needs torch).

A run directory (``ferkit train --out runs/x``) holds:
  last.pt        written atomically after every epoch (resume point)
  best.pt        the epoch with the best validation (PublicTest) accuracy
  config.json    the training configuration, seed included
  metrics.json / metrics.csv   one record per epoch
  curves.png     training-vs-validation accuracy and loss

A checkpoint is a dict:
  format       "ferkit-checkpoint-1"
  arch, arch_kwargs, num_classes, labels (list[str]), label_set
  preprocess   PreprocessSpec.to_dict() (the one preprocessing path)
  model        state_dict (float32)
  epoch        completed epochs; best_epoch, best_val_acc
  optimizer, scheduler, scaler, rng   (resume state; may be absent in exported/best-only files)
  history      list of per-epoch metric dicts
  config       training configuration; data: the splits' info (data sha256, label set, split, seed, ...)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import FerkitError

FORMAT = "ferkit-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically: a killed process never leaves a half-written checkpoint behind."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    state = {"format": FORMAT, **state}
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A run directory -> its best.pt (or last.pt); a file -> itself."""
    p = Path(path)
    if p.is_dir():
        for name in ((f"{which}.pt",) + (("last.pt",) if which == "best" else ())):
            if (p / name).is_file():
                return p / name
        raise FerkitError(f"{p} holds no {which}.pt: is it a run directory written by `ferkit train`?")
    if not p.is_file():
        raise FerkitError(f"no such checkpoint or run directory: {p}")
    return p


def load_checkpoint(path: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    import torch

    p = resolve_checkpoint(path, which)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise FerkitError(f"cannot read checkpoint {p}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FerkitError(f"{p} is not a ferkit checkpoint (expected format {FORMAT})")
    ckpt["path"] = str(p)
    return ckpt


def build_model(ckpt: dict[str, Any]):
    """The network of a checkpoint, weights loaded, in eval mode."""
    from .models import create_model

    model = create_model(ckpt["arch"], num_classes=ckpt["num_classes"], **ckpt.get("arch_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model

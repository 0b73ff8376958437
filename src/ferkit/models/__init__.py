"""Architecture registry (timm-style): ``create_model(name, num_classes)``; one file per architecture.

Every network takes (N, 1, 48, 48) float input (see ``ferkit.preprocess``) and returns logits (N, C).
"""
from __future__ import annotations

from typing import Callable

from ..errors import FerkitError

_REGISTRY: dict[str, Callable] = {}
_INFO: dict[str, dict] = {}


def register_model(name: str, **info):
    """Decorator: register a factory ``fn(num_classes=7, **kw) -> nn.Module`` under ``name``.

    ``info`` holds the literature recipe (optimiser, lr, batch, epochs, label set, source, reported accuracy).
    """

    def deco(fn):
        _REGISTRY[name] = fn
        _INFO[name] = dict(info)
        return fn

    return deco


def _load_all() -> None:
    from . import _all  # noqa: F401  (imports every architecture file, which registers itself)


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_info(name: str) -> dict:
    _load_all()
    if name not in _INFO:
        raise FerkitError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return dict(_INFO[name])


def create_model(name: str, num_classes: int = 7, **kwargs):
    _load_all()
    if name not in _REGISTRY:
        raise FerkitError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(_REGISTRY))} (`ferkit models` lists them)")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

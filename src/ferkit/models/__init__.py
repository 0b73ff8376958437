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


def check_model_options(name: str | None, options: dict, num_classes: int = 7) -> None:
    """Build the network once with ``options`` (``--model-opt``) so that an option the architecture does not
    take, or a value it cannot use, is a one-line FerkitError before any data is read. No options: nothing to
    check; an unknown ``name`` is left to :func:`create_model`."""
    _load_all()
    if not options or name not in _REGISTRY:
        return
    try:
        _REGISTRY[name](num_classes=num_classes, **options)
    except (TypeError, ValueError) as e:
        shown = ",".join(f"{k}={v!r}" for k, v in options.items())
        raise FerkitError(f"architecture {name!r} cannot be built with --model-opt {shown}: {e}") from None


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

"""Named training recipes for ``ferkit train --recipe NAME`` (plain data, no torch).

A recipe is a set of :class:`ferkit.train.TrainConfig` field values. How a run's settings are decided,
from weakest to strongest: ferkit's defaults < the architecture's literature recipe (its registry
info) < the named recipe < options given explicitly (CLI flags or ``TrainConfig`` fields). A recipe may
name the architecture; ``--arch`` still wins.

The numbers here were chosen by reasoning, not tuned by search; the model cards and the README say which
recipe produced which figure, with the command that reproduces it. ``cpu-2h`` is ``cpu-fast`` with the
schedule length and weight average of its first measured run (70.52% PrivateTest, 102 minutes on a
2-core Xeon with bf16; ``ferkit train --time-budget`` fits the epochs to a slower CPU instead).
``default`` reproduces the bundled default model and ``ferplus`` the single-network FER+ model it shipped
before the two-network ensemble; both need ``--ferplus PATH``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import FerkitError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


_CPU_FAST: dict[str, Any] = {
    "arch": "fastres_s",
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "batch_size": 128,
    "epochs": 30,
    "schedule": "onecycle",
    "warmup_epochs": 3,
    "label_smoothing": 0.1,
    "augment": {"preset": "standard", "flip": True, "shift": 0.1, "scale": 0.1, "rotate": 10.0, "erase": 0.25},
    "class_weights": "none",
    "sampling": "none",
    "precision": "auto",
    "channels_last": True,
}

RECIPES: dict[str, Recipe] = {
    "cpu-fast": Recipe(
        "cpu-fast",
        "the efficient network on a 2-core CPU, 30 epochs unless --epochs says otherwise: SGD with Nesterov "
        "momentum, one-cycle schedule, label smoothing 0.1, flip + shift/scale + rotation + erasing, bf16 "
        "autocast and channels-last",
        _CPU_FAST,
    ),
    "cpu-2h": Recipe(
        "cpu-2h",
        "cpu-fast for 160 epochs with an exponential moving average of the weights (decay 0.999): 70.52% "
        "PrivateTest without test-time augmentation in 102 minutes on a 2-core Xeon with bf16 "
        "(docs/models/candidates/ema_fastres_s_e160); a CPU without bf16 takes several times longer: add "
        "--time-budget MINUTES to train as many epochs as fit",
        {**_CPU_FAST, "epochs": 160, "ema": 0.999},
    ),
    "default": Recipe(
        "default",
        "the bundled default model's recipe: cpu-fast for 50 epochs with FER2013's labels half blended with "
        "the FER+ vote distribution, distilled from the bundled `accurate` and `ferplus` models (target: 0.2 x "
        "that blend + 0.8 x the mean of their probabilities; needs --ferplus PATH and FER2013's own CSV, the "
        "teachers' training data; docs/models/default/MODEL_CARD.md)",
        {**_CPU_FAST, "epochs": 50, "ferplus_mode": "blend", "ferplus_weight": 0.5, "label_set": "fer7",
         "teacher": ["accurate", "ferplus"], "teacher_weight": 0.8},
    ),
    "ferplus": Recipe(
        "ferplus",
        "the FER+ networks' recipe: the 8 FER+ classes learnt from the vote distributions, the `fastres` "
        "network, cpu-fast for 50 epochs (the `ferplus` model until 2026-12-01; the two networks of today's "
        "bundled `ferplus` add --epochs 100 --ema 0.999 and --arch fastres_m --seed 2 / --seed 1; needs "
        "--ferplus PATH; docs/models/ferplus/MODEL_CARD.md)",
        {**_CPU_FAST, "arch": "fastres", "epochs": 50, "ferplus_mode": "soft", "label_set": "ferplus8"},
    ),
    "gpu-strong": Recipe(
        "gpu-strong",
        "a long, heavily augmented run for a GPU (release-model starting point): SGD Nesterov, cosine with "
        "warmup, label smoothing 0.1, heavy augmentation with mixup/CutMix",
        {
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "batch_size": 128,
            "epochs": 150,
            "schedule": "cosine",
            "warmup_epochs": 5,
            "label_smoothing": 0.1,
            "augment": {"preset": "heavy", "cutmix": 1.0},
        },
    ),
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise FerkitError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}") from None

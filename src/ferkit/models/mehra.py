"""``mehra``: three groups of 3x3 convolutions (64, 128, 256) with BN, pooling and dropout (Keras project).

Layers (input (N, 1, 48, 48)); Keras pads 'valid' by default::

    3x conv 64 3x3 + ReLU, BN, max-pool 2, dropout 0.5     -> 64 x 21 x 21
    2x conv 128 3x3 + ReLU, BN, max-pool 2, dropout 0.5    -> 128 x 8 x 8
    2x conv 256 3x3 + ReLU, BN, max-pool 2, dropout 0.5    -> 256 x 2 x 2
    dense 1024 + ReLU, dropout 0.4, dense classes

Source recipe: Adam, batch 64, 100 epochs; reported 65.0% test on a random 80/10/10 split.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model


def _group(cin: int, cout: int, n: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3), nn.ReLU(inplace=True)]
    return layers + [nn.BatchNorm2d(cout), nn.MaxPool2d(2), nn.Dropout(dropout)]


class Mehra(nn.Module):
    def __init__(self, num_classes: int = 7, dropout: float = 0.5, fc_dropout: float = 0.4):
        super().__init__()
        self.features = nn.Sequential(
            *_group(1, 64, 3, dropout),
            *_group(64, 128, 2, dropout),
            *_group(128, 256, 2, dropout),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 2 * 2, 1024), nn.ReLU(inplace=True), nn.Dropout(fc_dropout),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "mehra",
    family="literature",
    label_set="fer7",
    optimizer="adam",
    lr=1e-3,
    momentum=None,
    nesterov=False,
    weight_decay=0.0,
    batch_size=64,
    epochs=100,
    schedule=None,
    schedule_params=None,
    clean=None,
    split="random",
    augment="none",
    tta=None,
    source="Keras project by Mehra: 3/2/2 conv groups of 64/128/256 filters",
    reported_accuracy="65.0% test on a random 80/10/10 split",
    description="3x conv64, 2x conv128, 2x conv256 (3x3, valid) with BN + dropout, dense 1024",
)
def mehra(num_classes: int = 7, **kwargs) -> Mehra:
    return Mehra(num_classes=num_classes, **kwargs)

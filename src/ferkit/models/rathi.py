"""``rathi``: a 5-class Keras model with batch normalisation.

Layers (input (N, 1, 48, 48)); Keras pads 'valid' by default::

    conv 64 5x5 (he_normal) + BN + ReLU  -> 64 x 44 x 44
    conv 64 4x4 + BN + ReLU              -> 64 x 41 x 41
    max-pool 2 + dropout 0.5             -> 64 x 20 x 20
    conv 32 3x3 + BN + ReLU              -> 32 x 18 x 18
    max-pool 2 + dropout 0.5             -> 32 x 9 x 9
    flatten (2,592) -> dense 128 + BN + ReLU + dropout 0.2 -> dense classes

That is 418,853 parameters for 5 classes (419,429 as Keras counts them, BN running statistics included).
The issue quotes "about 359k"; no padding choice of the described layers gives that (the flatten is
32*s*s: s = 9 gives 419k, s = 8 would give 349k), so ferkit keeps Keras' default 'valid' padding.
Source recipe: 16 epochs; reported 64.59% test on 5 classes.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model


class Rathi(nn.Module):
    def __init__(self, num_classes: int = 5, dropout: float = 0.5, fc_dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 5), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(64, 32, 3), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(dropout),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 9 * 9, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Dropout(fc_dropout),
            nn.Linear(128, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # he_normal, as the source
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "rathi",
    family="literature",
    label_set="fer5",
    optimizer="adam",
    lr=1e-3,
    momentum=None,
    nesterov=False,
    weight_decay=0.0,
    batch_size=None,
    epochs=16,
    schedule=None,
    schedule_params=None,
    clean=None,
    split="usage",
    augment="none",
    tta=None,
    source="Keras 5-class project by Rathi (optimiser not stated: Keras Adam defaults assumed)",
    reported_accuracy="64.59% test (5 classes)",
    description="conv 64 5x5, conv 64 4x4, conv 32 3x3 with BN, dense 128 + BN; 419k parameters",
)
def rathi(num_classes: int = 5, **kwargs) -> Rathi:
    return Rathi(num_classes=num_classes, **kwargs)

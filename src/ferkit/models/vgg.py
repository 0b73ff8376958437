"""``vgg``: the VGGNet variant of Khaireddin & Chen 2021 ("Facial Emotion Recognition: State of the Art
Performance on FER2013", 73.28% PrivateTest, single network trained on FER2013 alone).

Layers (input (N, 1, 48, 48)); every conv is 3x3 'same' followed by BN and ReLU::

    stage 1: 2x conv 64,  max-pool 2    -> 64 x 24 x 24
    stage 2: 2x conv 128, max-pool 2    -> 128 x 12 x 12
    stage 3: 2x conv 256, max-pool 2    -> 256 x 6 x 6
    stage 4: 2x conv 512, max-pool 2    -> 512 x 3 x 3
    FC 4608 -> 4096 + ReLU + dropout, FC 4096 -> 4096 + ReLU + dropout, FC 4096 -> classes

The paper trains on random 40x40 crops (final map 2x2, FC 2048 -> 4096) and averages ten 40x40 crops at
test time; ferkit keeps the 48x48 input of every other architecture, so the first FC takes 512*3*3.
Source recipe: SGD Nesterov lr 0.01, momentum 0.9, weight decay 1e-4, batch 64, reduce-on-plateau on
validation accuracy (factor 0.75, patience 5), ~300 epochs, heavy augmentation (random resized crop
0.8-1.2, shift 20%, flip, rotation 10 deg, random erasing), ten-crop at test time. Dropout 0.2.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class Vgg(nn.Module):
    def __init__(self, num_classes: int = 7, dropout: float = 0.2, widths=(64, 128, 256, 512), fc: int = 4096):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += _stage(cin, w)
            cin = w
        self.features = nn.Sequential(*layers)
        side = 48 // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model(
    "vgg",
    family="literature",
    label_set="fer7",
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    batch_size=64,
    epochs=300,
    schedule="plateau",
    schedule_params={"mode": "max", "factor": 0.75, "patience": 5},
    clean=None,
    split="usage",
    augment="heavy",
    tta="ten-crop",
    source="Khaireddin & Chen 2021, arXiv:2105.03588 (VGGNet variant)",
    reported_accuracy="73.28% PrivateTest (7 classes, ten-crop TTA, ~300 epochs)",
    description="VGG: 4 stages of 2x conv3x3+BN+ReLU (64/128/256/512) + max-pool, FC 4096-4096",
)
def vgg(num_classes: int = 7, **kwargs) -> Vgg:
    return Vgg(num_classes=num_classes, **kwargs)

"""``oleniuk``: six 'same'-padded convolutions of 22 filters (Keras source project).

Layers (input (N, 1, 48, 48)), all ReLU::

    conv 22 8x8                          -> 22 x 48 x 48
    conv 22 8x8 + max-pool 2             -> 22 x 24 x 24
    conv 22 8x8                          -> 22 x 24 x 24
    conv 22 4x4 + max-pool 4             -> 22 x 6 x 6
    conv 22 4x4
    conv 22 4x4 + dropout
    FC 22*6*6 = 792 -> classes

Source recipe: Adam lr 1e-3; 6 classes (angry and disgust merged); training images whose intensity
histogram has a bin above 350 of 2,304 pixels removed; happy under-sampled to about 5,800. Reported 56% test.
The dropout rate is not stated by the source; 0.5 here.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model


def _conv(cin: int, cout: int, k: int) -> list[nn.Module]:
    """Keras 'same' conv + ReLU; an even kernel pads the extra row/column at the bottom/right."""
    total = k - 1
    pad = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))
    return [pad, nn.Conv2d(cin, cout, k), nn.ReLU(inplace=True)]


class Oleniuk(nn.Module):
    def __init__(self, num_classes: int = 6, width: int = 22, dropout: float = 0.5):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv(1, w, 8),
            *_conv(w, w, 8), nn.MaxPool2d(2),
            *_conv(w, w, 8),
            *_conv(w, w, 4), nn.MaxPool2d(4),
            *_conv(w, w, 4),
            *_conv(w, w, 4),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(w * 6 * 6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "oleniuk",
    family="literature",
    label_set="fer6",
    optimizer="adam",
    lr=1e-3,
    momentum=None,
    nesterov=False,
    weight_decay=0.0,
    batch_size=None,
    epochs=None,
    schedule=None,
    schedule_params=None,
    clean={"histogram_max_bin": 350, "undersample": {"happy": 5800}},
    split="usage",
    augment="none",
    tta=None,
    source="Keras project by Oleniuk: six conv layers of 22 filters",
    reported_accuracy="56% test (6 classes, angry+disgust merged)",
    description="six 'same' convs of 22 filters (8x8, 8x8, 8x8, 4x4, 4x4, 4x4), FC 792 -> classes",
)
def oleniuk(num_classes: int = 6, **kwargs) -> Oleniuk:
    return Oleniuk(num_classes=num_classes, **kwargs)

"""``gudi``: the small AlexNet used by two of the source projects (tflearn, after Gudi 2015).

Layers (input (N, 1, 48, 48)); tflearn pads convolutions and pools 'same' by default, so the shapes are::

    conv 64 5x5 'same' + ReLU            -> 64 x 48 x 48
    local response normalisation         (tflearn defaults: radius 5, alpha 1e-4, beta 0.75, bias 1)
    max-pool 3x3 stride 2 'same'         -> 64 x 24 x 24
    conv 64 5x5 'same' + ReLU            -> 64 x 24 x 24
    max-pool 3x3 stride 2 'same'         -> 64 x 12 x 12
    conv 128 4x4 'same' + ReLU           -> 128 x 12 x 12
    dropout                              (tflearn ``dropout(x, 0.3)`` KEEPS 30%: drop rate 0.7)
    FC 3072 + ReLU  (18,432 -> 3,072: most of the 56.6M parameters)
    FC classes

Source recipe: momentum SGD (tflearn 'momentum': lr 0.001, momentum 0.9), batch 50, 100 epochs.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model


def conv_same(cin: int, cout: int, k: int) -> nn.Sequential:
    """TensorFlow 'same' convolution: output size = input size; an even kernel pads the extra
    row/column at the bottom/right, as TensorFlow does."""
    total = k - 1
    return nn.Sequential(nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2)),
                         nn.Conv2d(cin, cout, k))


class Gudi(nn.Module):
    def __init__(self, num_classes: int = 7, dropout: float = 0.7):
        super().__init__()
        self.features = nn.Sequential(
            conv_same(1, 64, 5),
            nn.ReLU(inplace=True),
            # TensorFlow's LRN divides alpha by nothing; PyTorch divides it by the window size (2*5+1).
            nn.LocalResponseNorm(size=11, alpha=1e-4 * 11, beta=0.75, k=1.0),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),  # = TF 'same': 48 -> 24
            conv_same(64, 64, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),  # 24 -> 12
            conv_same(64, 128, 4),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(128 * 12 * 12, 3072)
        self.classifier = nn.Linear(3072, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.features(x))
        x = torch.relu(self.fc(torch.flatten(x, 1)))
        return self.classifier(x)


@register_model(
    "gudi",
    family="literature",
    label_set="fer7",
    optimizer="sgd",
    lr=0.001,
    momentum=0.9,
    nesterov=False,
    weight_decay=0.0,
    batch_size=50,
    epochs=100,
    schedule=None,
    schedule_params=None,
    clean=None,
    split="usage",
    augment="none",
    tta=None,
    source="tflearn 'smaller AlexNet' of two FER2013 webcam projects (after Gudi 2015)",
    reported_accuracy="74% on a different, posed data set (not FER2013)",
    description="small AlexNet: 3 convs (64-64-128, 5x5/5x5/4x4), LRN, FC 3072; 56.6M parameters",
)
def gudi(num_classes: int = 7, **kwargs) -> Gudi:
    return Gudi(num_classes=num_classes, **kwargs)

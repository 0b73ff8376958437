"""Efficient residual networks for 48x48 faces, designed for a small CPU (see docs/architectures.md).

``FastRes`` is a ResNet with basic blocks (two 3x3 convs + BN, identity or 1x1-conv shortcut): a stem conv
at full 48x48 resolution, then stages that each halve the resolution with a stride-2 first block, global
average pooling, dropout and one linear layer. Every conv is dense (no depthwise convs) and followed by BN,
which the ONNX export folds into the conv weights, so inference is conv + add + ReLU only.

Why this shape (measured on the 2-core target CPU, numbers in docs/architectures.md): dense 3x3 convs run at
~20x the MACs/s of depthwise convs in onnxruntime there, so there are no depthwise convs; only the stem
works at 48x48 (one more 32-channel 3x3 conv there would cost 21M MACs, more than a whole stage); the 6x6 and 3x3 stages are
the least efficient per MAC, so extra blocks go to the 12x12/24x24 stages. Weights use He init with the
last BN of each block at 1: zero-initialised residual branches (common for deep ResNets) made these
shallow networks learn far slower at first (after 3 Adam epochs on 4,000 images: 32% vs 49% train,
31% vs 36% validation accuracy).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import register_model


class BasicBlock(nn.Module):
    """conv3x3(stride) + BN + ReLU, conv3x3 + BN, plus shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FastRes(nn.Module):
    """Stem (3x3 conv, ``stem`` channels, stride ``stem_stride``) then one stage per (width, blocks).

    The first block of each stage halves the resolution (the first stage's uses ``first_stride``, so
    ``first_stride=1`` keeps a stage at the stem's resolution). With the defaults a 48x48 face goes
    48 (stem) -> 24 -> 12 -> 6 -> 3. Head: global average pooling -> dropout -> linear.
    """

    def __init__(
        self,
        num_classes: int = 7,
        stem: int = 32,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 1, 1),
        first_stride: int = 2,
        stem_stride: int = 1,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = stem
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = (first_stride if i == 0 else 2) if j == 0 else 1
                layers.append(BasicBlock(cin, w, stride))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


# The defaults ``ferkit train --arch fastres*`` starts from: the settings of the ``cpu-fast`` recipe, which
# the pilots in docs/architectures.md used (one-cycle SGD, label smoothing, the 'standard' augmentation).
_FAST_RECIPE = dict(
    family="efficient",
    label_set="fer7",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    batch_size=128,
    epochs=30,
    schedule="onecycle",
    schedule_params=None,
    clean=None,
    split="usage",
    augment="standard",
    tta=None,
    label_smoothing=0.1,
    source="ferkit (designed for a 2-core CPU, see docs/architectures.md)",
    reported_accuracy="see docs/architectures.md (pilot) and the model cards",
)


@register_model(
    "fastres",
    **_FAST_RECIPE,
    description="ResNet, stem 32 @48px, stages 32/64/128/256 @24/12/6/3px with 1/2/2/1 blocks, GAP; ~58M MACs",
)
def fastres(num_classes: int = 7, **kwargs) -> FastRes:
    return FastRes(num_classes, stem=32, widths=(32, 64, 128, 256), blocks=(1, 2, 2, 1), **kwargs)


@register_model(
    "fastres_s",
    **_FAST_RECIPE,
    description="ResNet, stem 32 @48px, stages 32/64/128/256 @24/12/6/3px, 1 block each, GAP; ~37M MACs",
)
def fastres_s(num_classes: int = 7, **kwargs) -> FastRes:
    return FastRes(num_classes, stem=32, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), **kwargs)


@register_model(
    "fastres_l",
    **_FAST_RECIPE,
    description="ResNet, stem 32 @48px, stages 32/64/128/256 @24/12/6/3px with 1/1/2/2 blocks, GAP; ~58M MACs",
)
def fastres_l(num_classes: int = 7, **kwargs) -> FastRes:
    return FastRes(num_classes, stem=32, widths=(32, 64, 128, 256), blocks=(1, 1, 2, 2), **kwargs)


@register_model(
    "fastres_m",
    **_FAST_RECIPE,
    description="ResNet, stem 32 @48px, stages 32/64/128/256 @24/12/6/3px, 2 blocks each, GAP; ~79M MACs",
)
def fastres_m(num_classes: int = 7, **kwargs) -> FastRes:
    return FastRes(num_classes, stem=32, widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2), **kwargs)

"""An ensemble of trained networks as one module, for export to one ``.onnx`` (not a trainable architecture).

``EnsembleNet(members, weights)`` returns ``log(sum_i w_i * softmax(member_i(x)))``: the log of the
weighted mean of the members' probabilities. Its softmax is exactly that mean (the weights sum to 1), so
the runtime's usual softmax over the output gives the ensemble's probabilities, and the exported file
needs nothing special at inference time.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ensemble import normalized_weights
from ..errors import FerkitError


class EnsembleNet(nn.Module):
    def __init__(self, members: list[nn.Module], weights: list[float] | None = None):
        super().__init__()
        if not members:
            raise FerkitError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.weights = normalized_weights(weights, len(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = None
        for w, member in zip(self.weights, self.members):
            p = torch.softmax(member(x).float(), dim=1) * w
            probs = p if probs is None else probs + p
        return torch.log(probs.clamp_min(1e-12))

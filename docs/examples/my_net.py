"""Your own network, two ways (the documentation's example; digits are 1x8x8 images).

actlab compare --model docs/examples/my_net.py:build --dataset digits
actlab compare --model docs/examples/my_net.py:Net --swap relu --dataset digits
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn


def build(act: Callable[[], nn.Module]) -> nn.Module:
    """A builder: takes the activation factory (`act()` returns a fresh module)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        act(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 64),
        act(),
        nn.Linear(64, 10),  # logits: the loss is cross-entropy
    )


class Net(nn.Module):
    """An nn.Module written with ReLU: actlab swaps the module and the F.relu call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.fc1(x.flatten(1)))
        return self.out(F.relu(self.fc2(x)))

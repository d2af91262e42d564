"""actlab's built-in MLP (784-128-128-10) as a user model, e.g. to compare the stacked
user-model path with the built-in hand-written one (benchmarks/own_model.py):

    actlab compare --model examples/mlp.py:mlp --dataset fashion-mnist
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def mlp(act: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 128),
        act(),
        nn.Linear(128, 128),
        act(),
        nn.Linear(128, 10),
    )

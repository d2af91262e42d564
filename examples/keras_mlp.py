"""The classic Keras tutorial model, written in PyTorch with ReLU, as a user model:

    model = keras.Sequential([Flatten(), Dense(128, activation="relu"), Dropout(0.2), Dense(10)])

    actlab compare --model examples/keras_mlp.py:KerasMLP --swap relu \\
        --activations relu,gelu,tanh --dataset fashion-mnist --seeds 3

An nn.Module class: actlab builds it once per member after ``torch.manual_seed(seed)``
and swaps its ReLU (here an ``F.relu`` call in ``forward``, rewritten through torch.fx)
for the member's activation. Dropout masks are drawn per member from its seed. The layers
keep PyTorch's default init (Keras would use glorot_uniform).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class KerasMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.dense = nn.Linear(28 * 28, 128)
        self.dropout = nn.Dropout(0.2)
        self.logits = nn.Linear(128, 10)  # logits: CrossEntropyLoss applies the softmax

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.dropout(F.relu(self.dense(self.flatten(x)))))

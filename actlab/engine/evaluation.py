"""Evaluating a classifier's members: every member's mean cross-entropy and accuracy on a
split, in eval mode, in chunks of samples shared by all members (the chunk size bounds
memory only: the results do not depend on it; sums are float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EVAL_CHUNK = 2000  # evaluation batch size (memory only: results do not depend on it)


@torch.no_grad()
def evaluate_members(
    model: nn.Module, x: Tensor, y: Tensor, members: int, chunk: int
) -> tuple[list[float], list[float]]:
    """Mean loss and accuracy of each of the `members` stacked in `model` on (x, y)."""
    model.eval()
    K = members
    loss_sum = torch.zeros(K, dtype=torch.float64, device=x.device)
    correct = torch.zeros(K, dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        inputs, targets = x[start : start + chunk], y[start : start + chunk]
        logits = model(inputs.unsqueeze(0))  # (K, c, classes), the chunk shared by all
        c = inputs.shape[0]
        expanded = targets.expand(K, c)
        losses = F.cross_entropy(
            logits.reshape(K * c, -1), expanded.reshape(K * c), reduction="none"
        )
        loss_sum += losses.view(K, c).sum(dim=1, dtype=torch.float64)
        correct += (logits.argmax(dim=-1) == expanded).sum(dim=1)
    model.train()
    count = max(x.shape[0], 1)
    return (loss_sum / count).tolist(), (correct.double() / count).tolist()

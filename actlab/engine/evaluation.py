"""Evaluating a study's members: every member's mean loss and accuracy on a split, in
eval mode, in chunks of samples shared by all members (the chunk size bounds memory only:
the results do not depend on it; sums are float64). The loss is the study's
(actlab.engine.objective; default: cross-entropy with accuracy, a classifier's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EVAL_CHUNK = 2000  # evaluation batch size (memory only: results do not depend on it)


@torch.no_grad()
def evaluate_members(
    model: nn.Module, x: Tensor, y: Tensor, members: int, chunk: int, objective=None
) -> tuple[list[float], list]:
    """Mean loss and accuracy (None each when the objective counts none) of each of the
    `members` stacked in `model` on (x, y)."""
    if objective is None:
        from actlab.engine.objective import Objective

        objective = Objective("cross_entropy", accuracy=True)
    model.eval()
    try:
        return objective.evaluate(model, x, y, chunk, members)
    finally:
        model.train()

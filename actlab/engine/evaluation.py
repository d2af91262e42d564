"""Evaluating a study's members: every member's mean loss and accuracy on a split, in
eval mode, in chunks of samples shared by all members (the chunk size bounds memory only:
the results do not depend on it; sums are float64). The loss is the study's
(actlab.engine.objective; default: cross-entropy with accuracy, a classifier's). A user
model's own metric function is called once per member on the whole split's outputs
(actlab.engine.own_metric), never averaged over chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Evaluation:
    """Every member's mean loss, accuracy (None each when not counted) and own metric (None
    when the study has none) on one split."""

    losses: list[float]
    accuracies: list
    metrics: list | None = None


@torch.no_grad()
def evaluate_split(
    model: nn.Module, x: Tensor, y: Tensor, members: int, chunk: int, objective
) -> Evaluation:
    """`evaluate_members`, and the objective's own metric on the whole split (one call per
    member on its concatenated outputs: actlab.engine.own_metric)."""
    metric = getattr(objective, "own_metric", None)
    if metric is None:
        return Evaluation(*evaluate_members(model, x, y, members, chunk, objective))
    from actlab.engine.own_metric import member_metrics

    outputs: list[Tensor] = []
    model.eval()
    try:
        losses, accuracies = objective.evaluate(model, x, y, chunk, members, outputs)
    finally:
        model.train()
    values = member_metrics(metric, objective.metric_name, objective.reference, outputs, y, losses)
    return Evaluation(losses, accuracies, values)

"""The loss each member trains on, and the accuracy counted beside it (actlab.tasks).

Outputs are stacked: ``(K, b, ...)`` for K members on batches of b samples, targets
``(K, b, ...)`` (each member its own seed's). A member's loss is the mean over its batch of
the per-element loss (PyTorch's ``reduction="mean"``), so that summing the K losses and one
backward pass give each member the gradient of its own loss alone:

- ``cross_entropy``: logits ``(K, b, ..., C)`` and class indices ``(K, b, ...)``; the mean
  over every position (a sequence output ``(b, T, C)`` is T predictions per sample).
- ``mse`` ``(o - t)^2``, ``l1`` ``|o - t|``, ``huber`` (delta 1: ``(o - t)^2 / 2`` inside
  1, ``|o - t| - 1/2`` outside; torch.nn.HuberLoss), ``bce_with_logits``
  (``-(t log s(o) + (1 - t) log(1 - s(o)))``): outputs and targets of one shape; an
  output with one extra trailing dim of size 1 (``(b, 1)`` against ``(b,)``) is read as
  ``(b,)``, never broadcast to ``(b, b)``.
- ``model``: the user model's own ``loss(output, target) -> scalar``, called once per
  member on its own output and targets.

Evaluation sums the per-element losses in float64 and divides by their count: the mean over
the split, whatever the chunking. The user's own loss is evaluated per chunk and weighted
by the chunk's sample count: that is its mean over the split when it is a mean over
samples (as every torch loss with ``reduction="mean"``), which the docs ask of it.

A member diverges (actlab.engine.trainer) when its step loss is NaN/inf or above
DIVERGED_LOSS_FACTOR times the loss of an uninformed guess: ln C for cross-entropy over C
classes, ln 2 for BCE, and for a regression loss its value when every output is the train
targets' mean. The user's own loss has no known scale: only NaN/inf counts there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from actlab.errors import ConfigError

ELEMENTWISE = {
    "mse": lambda o, t: F.mse_loss(o, t, reduction="none"),
    "l1": lambda o, t: F.l1_loss(o, t, reduction="none"),
    "huber": lambda o, t: F.huber_loss(o, t, reduction="none", delta=1.0),
    "bce_with_logits": lambda o, t: F.binary_cross_entropy_with_logits(o, t, reduction="none"),
}


@dataclass
class Objective:
    """One study's loss (`name`: a key of ELEMENTWISE, ``cross_entropy`` or ``model``)
    and whether accuracy is counted (argmax of the last output dim against the targets)."""

    name: str
    accuracy: bool
    own_loss: Callable | None = None  # the user's loss(output, target), for "model"
    reference: str = "the model"

    # --- training ---------------------------------------------------------------------

    def member_losses(self, output: Tensor, targets: Tensor) -> Tensor:
        """(K,) mean loss of each member (differentiable)."""
        if self.name == "model":
            return torch.stack([self._own(output[k], targets[k]) for k in range(output.shape[0])])
        K = output.shape[0]
        return self.elements(output, targets).reshape(K, -1).mean(dim=1)

    def elements(self, output: Tensor, targets: Tensor) -> Tensor:
        """The per-element losses (K, b, ...) of a named loss."""
        if self.name == "cross_entropy":
            C = output.shape[-1]
            flat = F.cross_entropy(
                output.reshape(-1, C), targets.reshape(-1).long(), reduction="none"
            )
            return flat.view(targets.shape)
        output = self._aligned(output, targets)
        return ELEMENTWISE[self.name](output, targets.to(output.dtype))

    def _aligned(self, output: Tensor, targets: Tensor) -> Tensor:
        if output.dim() == targets.dim() + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        if output.shape != targets.shape:
            raise ConfigError(
                f"{self.reference}: its output {tuple(output.shape[1:])} does not match the "
                f"targets {tuple(targets.shape[1:])} (batch first) for --loss {self.name}; give "
                "outputs of the targets' shape (or with one trailing dim of size 1)"
            )
        return output

    def _own(self, output: Tensor, target: Tensor) -> Tensor:
        value = self.own_loss(output, target)
        if not isinstance(value, Tensor) or value.dim() != 0:
            got = (
                f"a tensor of shape {tuple(value.shape)}"
                if isinstance(value, Tensor)
                else f"a {type(value).__name__}"
            )
            raise ConfigError(
                f"{self.reference}: its loss(output, target) returned {got}; it must return "
                "one scalar tensor per batch (e.g. F.mse_loss(output, target), a mean)"
            )
        return value

    def correct(self, output: Tensor, targets: Tensor) -> Tensor:
        """(K,) correct predictions (argmax of the last dim) of each member."""
        K = output.shape[0]
        hits = output.detach().argmax(dim=-1) == targets
        return hits.reshape(K, -1).sum(dim=1)

    # --- evaluation -------------------------------------------------------------------

    def loss_sums(self, output: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """(K,) float64 sums of the losses of a chunk and the count they are over."""
        if self.name == "model":
            b = targets.shape[1]
            return self.member_losses(output, targets).double() * b, b
        K = output.shape[0]
        elements = self.elements(output, targets).reshape(K, -1)
        return elements.sum(dim=1, dtype=torch.float64), elements.shape[1]

    @torch.no_grad()
    def evaluate(self, model, x: Tensor, y: Tensor, chunk: int, K: int) -> tuple[list, list]:
        """Mean loss of each of the K members of a stacked `model` on (x, y), in chunks
        that all members share, and their accuracy (None each when none is counted)."""
        loss_sum = torch.zeros(K, dtype=torch.float64, device=x.device)
        correct = torch.zeros(K, dtype=torch.long, device=x.device)
        count = 0
        for start in range(0, x.shape[0], chunk):
            inputs, targets = x[start : start + chunk], y[start : start + chunk]
            output = model(inputs.unsqueeze(0))  # (K, c, ...)
            expanded = targets.expand(K, *targets.shape)
            sums, n = self.loss_sums(output, expanded)
            loss_sum += sums
            count += n
            if self.accuracy:
                correct += self.correct(output, expanded)
        losses = (loss_sum / max(count, 1)).tolist()
        if not self.accuracy:
            return losses, [None] * K
        return losses, (correct.double() / max(y.numel(), 1)).tolist()

    def single(self, output: Tensor, target: Tensor) -> Tensor:
        """The mean loss of one member's output (b, ...) on its targets (b, ...)."""
        return self.member_losses(output.unsqueeze(0), target.unsqueeze(0))[0]

    def divergence_scale(self, y_train: Tensor, num_classes: int) -> float:
        """The loss of an uninformed guess (see the module docstring); inf: no known scale."""
        if self.name == "cross_entropy":
            return math.log(max(num_classes, 2))
        if self.name == "bce_with_logits":
            return math.log(2)
        if self.name == "model" or len(y_train) == 0:
            return math.inf
        y = y_train.double()
        guess = torch.full_like(y, float(y.mean()))
        return max(float(ELEMENTWISE[self.name](guess, y).mean()), 1e-12)

    def check(self, output: Tensor, targets: Tensor) -> None:
        """One member's output on a small batch against its targets: the loss computes to
        a scalar, and accuracy has class scores to take the argmax of (one ConfigError
        line for a shape it cannot take)."""
        self.single(output, targets)
        if self.accuracy and (output.dim() != targets.dim() + 1 or targets.is_floating_point()):
            raise ConfigError(
                f"{self.reference}: accuracy needs class scores (batch, ..., classes) for "
                f"integer targets (batch, ...); its output is {tuple(output.shape)} for targets "
                f"{tuple(targets.shape)}: use --metric loss"
            )


def objective_for(config, reference: str = "the model", own_loss: Callable | None = None):
    """The Objective of a study's config (its task's loss; accuracy when the metric is)."""
    task = config.task
    name = "cross_entropy" if task.loss == "token_cross_entropy" else task.loss
    if name == "model" and own_loss is None:
        raise ConfigError(
            f"--loss model: {reference} defines no `loss(output, target)`; define one, or "
            "choose a named --loss"
        )
    # Accuracy is counted when it is the metric, and beside a cross-entropy compared on
    # its loss (a column for the reader; the report compares the loss).
    accuracy = task.has_accuracy or (name == "cross_entropy" and task.name != "lm")
    return Objective(name, accuracy, own_loss, reference)


def objective_of(config) -> Objective:
    """The study's Objective, with a user model's own loss (``--loss model``)."""
    own = None
    if config.is_user_model and config.loss == "model":
        from actlab.nn.user_model import load_for, own_loss

        own = own_loss(load_for(config))
    return objective_for(config, f"--model {config.model}", own)

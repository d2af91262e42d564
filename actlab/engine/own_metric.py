"""A user model's own metric function, measured on a whole split (``--metric model``).

The model defines ``metric(output, target) -> scalar`` (``build.metric = mae`` or a
``@staticmethod`` of its class) and ``metric_higher_is_better`` beside it (actlab.nn.
user_model.own_metric). Evaluation (actlab.engine.evaluation) runs in chunks of samples for
memory; the metric is not summed over them. Each member's outputs of every chunk are kept on
the CPU, concatenated, and the metric is called ONCE per member on the split's whole output
``(N, ...)`` and its targets ``(N, ...)``:

    val_metric_k = metric(concat_chunks(output_k), y)

so a metric that is not a mean over samples (R², F1, a median) is the split's, whatever the
chunking. Outputs (and floating-point targets) are handed over in float64, so that a mean
over the split is not rounded in float32. Memory: K members x N samples x the output's size
x 8 bytes on the CPU for the largest split evaluated (diabetes: 8 x 88 x 1 x 8 B = 5.6 kB;
10,000 samples of 10 class scores for 8 members: 6.4 MB). Language modelling runs only the
built-in ``--net gpt``, so a metric function never meets a split's per-token logits.

The value must be one real number (a 0-dim tensor or a Python number). A member whose loss
is finite (a healthy member) and whose metric is NaN or infinite is a bug in the metric,
stopped with one line naming it; a diverged member's metric is recorded as empty.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from actlab.errors import ConfigError


def as_metric_value(value, name: str, reference: str) -> float:
    """The metric's return value as a float, or one ConfigError line when it is not one
    real number."""
    if isinstance(value, Tensor):
        if value.numel() == 1 and value.dim() <= 1 and not value.is_complex():
            return float(value.detach().reshape(()).item())
        got = f"a tensor of shape {tuple(value.shape)}"
    elif isinstance(value, numbers.Real):
        return float(value)
    else:
        got = f"a {type(value).__name__}"
    raise ConfigError(
        f"{reference}: its metric {name}(output, target) returned {got}; it must return one "
        "number per call (a scalar tensor, e.g. (output - target).abs().mean())"
    )


def whole_split(output: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """One member's output and the targets as the metric receives them: float64 when
    floating point, on the CPU."""
    output = output.detach().to("cpu")
    targets = targets.detach().to("cpu")
    if output.is_floating_point():
        output = output.double()
    if targets.is_floating_point():
        targets = targets.double()
    return output, targets


def measure(metric: Callable, name: str, reference: str, output: Tensor, targets: Tensor) -> float:
    """metric(output, targets) of one member (see `whole_split`) as a float; what the
    function raises or returns that is not one number is one ConfigError line."""
    try:
        value = metric(*whole_split(output, targets))
    except Exception as error:  # the user's code: its first line, not a traceback
        text = str(error).strip().splitlines()
        raise ConfigError(
            f"{reference}: its metric {name}(output, target) raised {type(error).__name__}: "
            f"{text[0][:200] if text else ''} (output {tuple(output.shape)}, target "
            f"{tuple(targets.shape)})"
        ) from None
    return as_metric_value(value, name, reference)


@torch.no_grad()
def member_metrics(
    metric: Callable,
    name: str,
    reference: str,
    chunks: list[Tensor],
    targets: Tensor,
    losses: list[float],
) -> list[float | None]:
    """The metric of each member on a whole split: `chunks` are the stacked outputs
    (K, c, ...) of consecutive chunks of the split, `targets` (N, ...) its targets and
    `losses` each member's mean loss on it (a member with a non-finite loss diverged: its
    metric is None). Called once per member on its concatenated (N, ...) output."""
    if not chunks:
        return [None] * len(losses)
    outputs = torch.cat([chunk.detach().to("cpu") for chunk in chunks], dim=1)
    values: list[float | None] = []
    for k, loss in enumerate(losses):
        if not math.isfinite(loss):
            values.append(None)
            continue
        value = measure(metric, name, reference, outputs[k], targets)
        if not math.isfinite(value):
            raise ConfigError(
                f"{reference}: its metric {name}(output, target) returned {value} on "
                f"{len(targets)} samples for a member whose loss there is finite ({loss:.4g}); "
                "a metric must give a finite number for a healthy model (guard its divisions)"
            )
        values.append(value)
    return values

"""When a member has diverged: a step loss that is NaN/inf, or above DIVERGED_LOSS_FACTOR
times ln(classes), the loss of a uniform guess (Adam with a huge lr blows the loss up to
thousands without ever reaching inf: its steps are bounded by lr, and such a member has
stopped learning). A diverged member is frozen by the optimizer (lr 0, gradients and state
zeroed), masked out of the summed loss, and recorded in the epoch it diverged; the others go
on. On a GPU the check stays on the device and reaches the host every CUDA_SYNC_EVERY steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DIVERGED_LOSS_FACTOR = 100.0
CUDA_SYNC_EVERY = 50  # steps between host checks for divergence on a GPU


def loss_limit(num_classes: int) -> float:
    """DIVERGED_LOSS_FACTOR * ln(num_classes) (at least two classes)."""
    return DIVERGED_LOSS_FACTOR * math.log(max(num_classes, 2))


def healthy(losses: Sequence[float], limit: float) -> list[bool]:
    """Per member: its loss is finite and at most `limit`."""
    return [math.isfinite(v) and v <= limit for v in losses]


def record_diverged(diverged_epoch: list[int | None], ok: Sequence[bool], epoch: int) -> list[int]:
    """Record the members not diverged before whose `ok` flag is False as diverged in
    `epoch` (in place); returns them (the caller freezes them)."""
    newly = [k for k, good in enumerate(ok) if not good and diverged_epoch[k] is None]
    for k in newly:
        diverged_epoch[k] = epoch
    return newly

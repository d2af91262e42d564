"""Learning-rate schedules: the factor that multiplies every member's lr at a step.

    warm-up (t < warmup):  (t + 1) / warmup                     linear, reaching 1 at t = warmup - 1
    constant:              1
    cosine:                (1 + cos(pi * (t - warmup) / (total - warmup))) / 2   from 1 towards 0

`t` counts the optimizer steps taken before this one (0 for the first), `total` the steps of
the whole study (epochs x steps per epoch). Cosine decay as in Loshchilov & Hutter 2017,
"SGDR", without restarts; linear warm-up as in Goyal et al. 2017. The same function drives
the stacked optimizer and, through ``torch.optim.lr_scheduler.LambdaLR``, the plain oracle.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, schedule: str = "constant", warmup: int = 0) -> float:
    """The multiplier of the base lr at optimizer step `step` (0-based); see the module."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; choose constant or cosine")

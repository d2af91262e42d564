"""What training reports: `StepInfo` after every optimizer step (progress), `EpochResult`
after every epoch (the metrics.csv and diagnostics.csv rows, and the state to checkpoint),
and the columns that name a member's row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from actlab.config import Member

METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


@dataclass
class StepInfo:
    """Passed to `on_step` after every optimizer step. `losses` (K,) stays on the device:
    reading it forces a synchronisation."""

    depth: int | None
    epoch: int
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int
    losses: Tensor


@dataclass
class EpochResult:
    """One epoch of one stacked model: rows for the run directory and the state after it."""

    depth: int | None
    epoch: int  # 1-based
    epochs: int
    members: list[Member]
    metrics: list[dict]
    diagnostics: list[dict]
    epoch_time_s: float
    diverged: list[int] = field(default_factory=list)  # members that diverged in this epoch
    state: dict = field(default_factory=dict)  # engine state; save it before the next epoch


def member_fields(member: Member, depth: int | None, epoch: int) -> dict:
    """The columns that name a member's row in metrics.csv and diagnostics.csv (the
    member's index in the whole study, also when a trainer holds a subset)."""
    return {
        "depth": depth,
        "member": member.index,
        "activation": member.activation,
        "seed": member.seed,
        "lr": member.lr,
        "epoch": epoch,
    }


def metrics_row(
    member: Member, depth: int | None, epoch: int, elapsed: float, diverged: bool, **measured
) -> dict:
    """A member's metrics.csv row of one epoch: its naming columns, every METRIC_NAMES
    column (None where not measured: a language model has no accuracy, a study without a
    validation split no val_*), the epoch time and the status. A member that diverged in
    this epoch has no metrics: its row says only that."""
    row = {
        **member_fields(member, depth, epoch),
        **dict.fromkeys(METRIC_NAMES),
        "epoch_time_s": elapsed,
    }
    if diverged:
        return {**row, "status": "diverged"}
    row.update(measured)
    row["status"] = "ok"
    return row

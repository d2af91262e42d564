"""One callback object for a running study, local or on Ray (Lightning's ``Callback`` is
the anchor): every hook is a no-op, so a caller overrides only what it needs.

    class Printer(StudyCallback):
        def on_epoch(self, result):
            print(result.epoch, [row["test_acc"] for row in result.metrics])

    run_study(config, out="runs/x", callback=Printer())

`FunctionCallbacks` turns the keyword callables of older callers (``on_epoch=...``) into
one; the study driver only ever calls a StudyCallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class StudyCallback:
    """Hooks of a study, in the order they come. Local runs call on_note, on_start,
    on_plan, then per step on_step (and on_threads when the thread count is chosen again)
    and per epoch on_epoch (on a CPU with ``--threads N``, on_plan comes with the study's
    second step, whose time the estimate is made from); Ray runs call on_note, on_shards, on_resume, on_start, then
    on_progress as shards finish epochs and on_epoch once every shard has."""

    def on_note(self, text: str) -> None:
        """A repair made when the run directory was reopened (``metrics.csv: restored ...``)."""

    def on_start(self, steps_total: int, steps_done: int) -> None:
        """Once before training: the steps of the whole study, and those already done."""

    def on_plan(self, plan: Any) -> None:
        """Local runs: the thread choice and time estimate (driver.StudyPlan)."""

    def on_threads(self, choice: Any, reason: str) -> None:
        """Local CPU runs: the thread count was chosen again (a new depth, a slower step)."""

    def on_step(self, info: Any) -> None:
        """Local runs: after each training step (engine.results.StepInfo)."""

    def on_epoch(self, result: Any) -> None:
        """After each epoch of every member of a depth (engine.results.EpochResult)."""

    def on_shards(self, shards: list, plan: Any) -> None:
        """Ray runs: the shards and what each asks of the cluster, before training."""

    def on_progress(self, steps: float, depth: int | None, epoch: int, epochs: int) -> None:
        """Ray runs: a shard finished an epoch (`steps` of the whole study's count)."""

    def on_resume(self, line: str) -> None:
        """Ray runs: training continues a checkpoint (``resuming after epoch 3/10``)."""


HOOKS = tuple(name for name in vars(StudyCallback) if name.startswith("on_"))


class FunctionCallbacks(StudyCallback):
    """A StudyCallback from keyword callables (``on_epoch=f``); None leaves a hook a no-op."""

    def __init__(self, **hooks: Callable[..., None] | None) -> None:
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise TypeError(f"unknown study hooks {unknown}; known: {list(HOOKS)}")
        for name, function in hooks.items():
            if function is not None:
                setattr(self, name, function)


def callback_of(callback: StudyCallback | None, **hooks: Callable[..., None] | None):
    """The callback a study calls: `callback`, or one made of keyword `hooks` (not both)."""
    given = {name: f for name, f in hooks.items() if f is not None}
    if callback is not None and given:
        raise TypeError("give callback= or the on_* keywords, not both")
    return callback if callback is not None else FunctionCallbacks(**given)

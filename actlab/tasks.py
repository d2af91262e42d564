"""What a study is scored on: its task, as one small value object.

A task names the loss the members train on, the metric that compares them, which way that
metric is better, and how to write it. The engine, the statistics and the report read it;
nothing else branches on the kind of study.

- ``classify``: cross-entropy over classes; metric: test accuracy (higher is better),
  written in percent.
- ``lm``: next-token prediction; the output is (batch, time, vocab) and the loss is the mean
  token cross-entropy in nats/token; metric: test loss (lower is better), also written as
  bits per character, ``bpc = nats / ln 2``, which for a byte-level vocabulary is bits per
  byte (a character of ASCII text).
The task follows from the dataset (``text:PATH`` is a language-modelling corpus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Task:
    """One kind of study: its loss, its metric, and the metric's direction and units."""

    name: str
    loss: str  # "cross_entropy" | "token_cross_entropy"
    metric: str  # the metrics.csv column compared at the final epoch, e.g. "test_acc"
    metric_label: str  # words for the metric: "test accuracy", "test loss"
    higher_is_better: bool
    unit: str  # "%" | "nats/token"

    @property
    def direction(self) -> str:
        """``higher is better`` or ``lower is better``, as the report says it."""
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def has_accuracy(self) -> bool:
        return self.name == "classify"

    def better(self, a: float, b: float) -> bool:
        """Whether metric value `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def format(self, value: float) -> str:
        """The metric as written: ``97.12%``, ``1.2345 nats/token (1.7810 bpc)``."""
        if value is None or not math.isfinite(value):
            return "–"
        if self.name == "classify":
            return f"{100 * value:.2f}%"
        return f"{value:.4f} nats/token ({bits_per_character(value):.4f} bpc)"


def bits_per_character(nats_per_token: float) -> float:
    """Bits per character of a byte-level model: the mean token loss in nats over ln 2."""
    return nats_per_token / LN2


CLASSIFY = Task("classify", "cross_entropy", "test_acc", "test accuracy", True, "%")
LM = Task("lm", "token_cross_entropy", "test_loss", "test loss", False, "nats/token")
TASKS = {task.name: task for task in (CLASSIFY, LM)}

TEXT_SCHEME = "text:"


def task_for_dataset(dataset: str) -> Task:
    """The task a dataset implies: a ``text:`` corpus is language modelling, else classify."""
    return LM if str(dataset).startswith(TEXT_SCHEME) else CLASSIFY


def get_task(name: str) -> Task:
    return TASKS[name]

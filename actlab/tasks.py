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
- ``regress``: mean squared error against real-valued targets; metric: test MSE (lower is
  better), written ``0.4123 MSE``. The built-in regression dataset (``diabetes``) has its
  target standardised with the train split's mean and std, so an MSE of 1.0 is what
  predicting the train mean scores (see actlab.data.regression).
The task follows from the dataset (``text:PATH`` is a language-modelling corpus,
``diabetes`` a regression). A study may train on another loss (``--loss``, or a user
model's own ``loss``) and be scored on its accuracy or on that loss (``--metric``):
`with_objective` gives the task that results.
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
    unit: str  # "%" | "nats/token" | "MSE" | the loss's name
    # How the report writes the metric: value * scale in `short` units, named `long`.
    scale: float = 1.0
    short: str = ""  # "bpc", "MSE"
    long: str = ""  # "bits per character (nats/token / ln 2)", "mean squared error"

    @property
    def direction(self) -> str:
        """``higher is better`` or ``lower is better``, as the report says it."""
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def has_accuracy(self) -> bool:
        return self.metric == "test_acc"

    def better(self, a: float, b: float) -> bool:
        """Whether metric value `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def format(self, value: float) -> str:
        """The metric as written: ``97.12%``, ``1.2345 nats/token (1.7810 bpc)``."""
        if value is None or not math.isfinite(value):
            return "–"
        if self.higher_is_better:
            return f"{100 * value:.2f}%"
        if self.name == "lm":
            return f"{value:.4f} nats/token ({bits_per_character(value):.4f} bpc)"
        return f"{value:.4f} {self.unit}"


def bits_per_character(nats_per_token: float) -> float:
    """Bits per character of a byte-level model: the mean token loss in nats over ln 2."""
    return nats_per_token / LN2


CLASSIFY = Task("classify", "cross_entropy", "test_acc", "test accuracy", True, "%")
LM = Task(
    "lm", "token_cross_entropy", "test_loss", "test loss", False, "nats/token",
    1 / LN2, "bpc", "bits per character (nats/token / ln 2)",
)  # fmt: skip
REGRESS = Task(
    "regress", "mse", "test_loss", "test MSE", False, "MSE", 1.0, "MSE", "mean squared error"
)
TASKS = {task.name: task for task in (CLASSIFY, LM, REGRESS)}

TEXT_SCHEME = "text:"
REGRESSION_DATASETS = ("diabetes",)

# The losses a study may train on (--loss; actlab.engine.objective computes them), with the
# words the report uses when the study is scored on that loss.
LOSS_WORDS = {
    "cross_entropy": ("CE", "cross-entropy"),
    "mse": ("MSE", "mean squared error"),
    "l1": ("MAE", "mean absolute error (L1)"),
    "huber": ("Huber", "Huber loss (delta 1)"),
    "bce_with_logits": ("BCE", "binary cross-entropy on logits"),
    "model": ("loss", "the model's own loss"),
}
LOSSES = tuple(name for name in LOSS_WORDS if name != "model")
METRICS = ("accuracy", "loss")
# Metric names that are the loss itself: --metric mse with --loss mse is the test loss.
METRIC_IS_LOSS = {"mse": "mse", "mae": "l1", "l1": "l1", "huber": "huber"}


def task_for_dataset(dataset: str) -> Task:
    """The task a dataset implies: a ``text:`` corpus is language modelling, ``diabetes``
    a regression, anything else classification."""
    name = str(dataset)
    if name.startswith(TEXT_SCHEME):
        return LM
    if name.strip().lower() in REGRESSION_DATASETS:
        return REGRESS
    return CLASSIFY


def with_objective(task: Task, loss: str | None, metric: str | None) -> Task:
    """The task of a study that trains on `loss` (None: the task's own) and is scored on
    `metric` ("accuracy", "loss", or a name of the loss itself such as "mse"; None: accuracy
    for a classifier trained on cross-entropy or the model's own loss, else the loss). Names
    are checked by the config."""
    if loss is None and metric is None:
        return task
    loss = loss or task.loss
    if metric is None:  # a classifier's own loss is still scored on accuracy
        metric = "accuracy" if loss in ("cross_entropy", "model") and task.has_accuracy else "loss"
    metric = "loss" if metric in METRIC_IS_LOSS else metric
    if metric == "accuracy":
        return Task(task.name, loss, "test_acc", "test accuracy", True, "%")
    if loss == task.loss and not task.higher_is_better:
        return task
    short, long = LOSS_WORDS.get(loss, ("loss", loss))
    label = f"test {short}" if short != "loss" else "test loss"
    return Task(task.name, loss, "test_loss", label, False, short, 1.0, short, long)


def get_task(name: str) -> Task:
    return TASKS[name]

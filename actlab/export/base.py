"""The export target base class: what TensorBoard and MLflow (and any other tracking tool)
implement to receive a study (`ExportTarget`), and the small text helpers they share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from actlab.export.rows import Batch, Study


class ExportTarget(ABC):
    """One place a study is exported to. `write` is called with batches of rows (live: one
    per epoch; `actlab export`: one for the whole run directory) and must skip what the
    target already holds; `finish` once at the end. `written` counts the per-epoch values
    this object wrote (for the summary line)."""

    kind: str  # "tensorboard" or "mlflow": the --log / `actlab export` name
    written: int = 0

    @abstractmethod
    def describe(self) -> str:
        """The target in a few words (``tensorboard runs/tb``), for an error message."""

    @abstractmethod
    def where(self, study: Study) -> str:
        """Where `study` went, for the line printed at the end."""

    @abstractmethod
    def write(self, study: Study, batch: Batch) -> None:
        """Write what the target lacks of `batch` (epochs, and finished members' finals)."""

    @abstractmethod
    def finish(self, study: Study, complete: bool) -> None:
        """After the last batch; `complete`: every member of the study has finished."""


def count(number: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def one_line(error: BaseException) -> str:
    """An exception's text on one line of at most 300 characters (a warning, an error)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."

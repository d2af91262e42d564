"""Where a study stands and what is left to train: the one place the depth loop and the
resume arithmetic live, for the local executor (actlab.study.driver) and the Ray one
(actlab.study.cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from actlab.config import ExperimentConfig
from actlab.study.checkpoint import Checkpoint


@dataclass(frozen=True)
class ResumePoint:
    """The last complete (depth index, epoch) of a study; (-1, epochs) when nothing was
    checkpointed. `checkpoint` is the checkpoint it came from (None for a fresh study)."""

    config: ExperimentConfig
    checkpoint: Checkpoint | None

    @property
    def depth_index(self) -> int:
        return -1 if self.checkpoint is None else self.checkpoint.depth_index

    @property
    def epoch(self) -> int:
        return self.config.epochs if self.checkpoint is None else self.checkpoint.epoch

    @property
    def finished(self) -> bool:
        """Whether the checkpoint is the last epoch of the last depth: nothing to train."""
        return self.checkpoint is not None and self.checkpoint.finished(self.config)

    @property
    def resumed_from(self) -> tuple[int | None, int] | None:
        """(depth, epoch) of the checkpoint continued, None for a fresh study."""
        if self.checkpoint is None:
            return None
        return self.config.depth_list[self.depth_index], self.epoch

    def resume_line(self) -> str | None:
        """``resuming after epoch 6/10`` (``of depth 4``), None when nothing is resumed."""
        if self.resumed_from is None or self.finished:
            return None
        depth, epoch = self.resumed_from
        where = "" if depth is None else f" of depth {depth}"
        return f"resuming after epoch {epoch}/{self.config.epochs}{where}"

    def steps(self, steps_per_epoch: int) -> tuple[int, int]:
        """(steps of the whole study, steps already done), for progress and estimates."""
        config = self.config
        total = steps_per_epoch * config.epochs * len(config.depth_list)
        if self.checkpoint is None:
            return total, 0
        return total, steps_per_epoch * (config.epochs * max(self.depth_index, 0) + self.epoch)

    def depths_left(self) -> Iterator[tuple[int, int | None, Checkpoint | None]]:
        """(index, depth, the checkpoint to continue or None) of every depth to train."""
        for index, depth in enumerate(self.config.depth_list):
            if index < self.depth_index:
                continue
            if index == self.depth_index:
                if self.epoch == self.config.epochs:
                    continue
                yield index, depth, self.checkpoint
            else:
                yield index, depth, None

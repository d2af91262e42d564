"""What `actlab compare` prints while it trains: a progress bar on stderr, the plan, one
line per epoch (one per member per epoch with --verbose) and how the study is sharded."""

from __future__ import annotations

import sys


class CompareProgress:
    """A tqdm bar on stderr (depth, epoch, step, elapsed<remaining), the thread choice and
    the time estimate before training, and after each epoch one line with the elapsed and
    remaining time (also when stdout is a log file). Members that diverge are named as it
    happens; with `verbose`, every member's losses and accuracy are printed each epoch."""

    def __init__(self, clock=None, verbose: bool = False, task=None) -> None:
        import time

        self.bar = None
        self.described: tuple | None = None
        self.clock = clock or time.perf_counter
        self.verbose = verbose
        self.task = task  # the study's (actlab.tasks.Task): how an epoch's line reads
        self.total = self.done_at_start = self.done = 0
        self.started: float | None = None

    def start(self, total: int, done: int) -> None:
        from tqdm import tqdm

        self.total, self.done_at_start, self.done = total, done, done
        self.started = self.clock()
        # disable=None: a bar on a terminal; none when stderr is a log file (CI), where the
        # per-epoch lines on stdout already say how far the study is.
        self.bar = tqdm(
            total=total, initial=done, unit="step", file=sys.stderr, leave=False, disable=None
        )

    def plan(self, plan) -> None:
        threads = plan.threads and plan.threads.describe()
        kernels = plan.kernels and f"step kernels: {plan.kernels}"
        for line in (plan.resume_line(), threads, kernels, plan.describe()):
            if line:
                self.write(line)
        if self.done == self.done_at_start:  # (with --threads N the plan follows 2 steps)
            self.started = self.clock()  # the remaining-time estimate counts training only

    def threads(self, choice, reason: str) -> None:
        self.write(f"{reason}: {choice.describe()}")

    def step(self, info) -> None:
        self.advance(1, info.depth, info.epoch, info.epochs)

    def advance(self, steps: float, depth: int | None, epoch: int, epochs: int) -> None:
        """`steps` more steps of the study done (a Ray shard's epoch is a fraction of one
        epoch's steps); the description names the depth and epoch."""
        key = (depth, epoch)
        if key != self.described:
            where = "" if depth is None else f"depth {depth} "
            self.bar.set_description(f"{where}epoch {epoch}/{epochs}", refresh=False)
            self.described = key
        self.done += steps
        self.bar.update(steps)

    def epoch(self, result) -> None:
        from actlab.study.driver import epoch_lines

        diverged = set(result.diverged)
        for row, line in zip(result.metrics, epoch_lines(result, self.task), strict=True):
            if self.verbose or row["member"] in diverged:
                self.write(line)
        self.write(self.time_line(result))

    def time_line(self, result) -> str:
        """``progress: 3/10 epochs (30% of the steps), 31 s elapsed, about 1 min 12 s left``."""
        from actlab.study.driver import format_duration

        elapsed = self.clock() - (self.started if self.started is not None else self.clock())
        trained = self.done - self.done_at_start
        left = self.total - self.done
        depth = "" if result.depth is None else f"depth {result.depth}: "
        text = (
            f"progress: {depth}{result.epoch}/{result.epochs} epochs "
            f"({100 * self.done / max(1, self.total):.0f}% of the steps), "
            f"{format_duration(elapsed)} elapsed"
        )
        if trained and left:
            text += f", about {format_duration(elapsed / trained * left)} left"
        return text

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_shards(shards, plan) -> None:
    """One line: how the study is split over the Ray cluster."""
    kind = f"{plan.num_gpus} GPU" if plan.num_gpus else f"{plan.num_cpus} CPU"
    sizes = sorted({len(shard.members) for shard in shards})
    print(
        f"ray: {len(shards)} shards of {'/'.join(map(str, sizes))} members, {kind} each, "
        f"{plan.slots} at once"
    )

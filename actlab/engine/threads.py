"""How many CPU threads to train with: chosen by measuring, not assumed.

torch uses one OpenMP thread per core by default. On a machine where another process is
busy (a shared laptop, a CI runner, a cluster node) that can be ten times slower than one
thread: every parallel region ends in a barrier that waits for the thread the OS has
descheduled. The only reliable way to know is to time the real step, so a study times a
few steps of its own stacked model with each candidate count (interleaved, so that a load
that comes and goes hits every candidate alike), keeps the fastest, and re-checks when the
step time later degrades badly. ``--threads N`` skips all of this.

The CPUs this process may really use are the smaller of its affinity mask
(``os.sched_getaffinity``: taskset, cpusets) and its cgroup CPU quota (``cpu.max`` in
cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us`` in v1: containers, CI runners).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Candidates within this fraction of the fastest count as equally fast; the fewest threads
# among them win (they leave cores to the other processes and wait on fewer barriers).
TIE_TOLERANCE = 0.05
# A re-check is due when the median step time of a window is this many times the baseline.
DEGRADED_FACTOR = 1.5
WINDOW_STEPS = 50  # steps per window of the step-time watch
MAX_WINDOW_STEPS = 1600  # the window after re-checks that kept the count (it doubles each)
LOSER_FACTOR = 3.0  # a candidate this many times slower than the best is timed no further


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None if unlimited.

    cgroup v2: ``<root>/cpu.max`` holds ``"max 100000"`` or ``"150000 100000"``; v1:
    ``<root>/cpu/cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us``. Reference: the
    Linux kernel's Documentation/admin-guide/cgroup-v2.rst, "cpu.max"."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_v1 = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_v1 = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_v1 <= 0 or period_v1 <= 0 else quota_v1 / period_v1


def available_cpus(
    affinity: Sequence[int] | None = None, cgroup_limit: float | None | bool = False
) -> int:
    """CPUs this process can really use: its affinity mask, capped by the cgroup quota
    (rounded up: a quota of 1.5 CPUs can keep two threads busy part of the time)."""
    if affinity is None:
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = range(os.cpu_count() or 1)
    cpus = max(1, len(affinity))
    limit = cgroup_cpu_limit() if cgroup_limit is False else cgroup_limit
    if limit is not None and limit > 0:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus


def candidate_counts(cpus: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `cpus`, and `cpus` itself: 1, 2 on two cores; 1, 2, 4, 6 on six."""
    counts, count = [], 1
    while count < cpus:
        counts.append(count)
        count *= 2
    counts.append(cpus)
    return tuple(counts)


@dataclass
class ThreadChoice:
    """The thread count a study trains with, and why."""

    threads: int
    forced: bool  # --threads N (nothing measured)
    cpus: int  # CPUs available to the process (affinity and cgroup quota)
    step_seconds: dict[int, float] = field(default_factory=dict)  # median step time by count
    cost_s: float = 0.0  # wall time spent measuring

    @property
    def best_step_s(self) -> float | None:
        return self.step_seconds.get(self.threads)

    def describe(self) -> str:
        """``threads: 1 of 2 CPUs, measured (1: 5.1 ms/step, 2: 31.0 ms/step; 0.2 s)``."""
        if self.forced:
            return f"threads: {self.threads} (--threads; {self.cpus} CPUs available)"
        timings = ", ".join(f"{n}: {1e3 * s:.1f} ms/step" for n, s in self.step_seconds.items())
        return (
            f"threads: {self.threads} of {self.cpus} CPUs, the fastest measured "
            f"({timings}; {self.cost_s:.1f} s); --threads N forces a count"
        )


def choose_threads(
    step: Callable[[], object],
    candidates: Sequence[int],
    *,
    rounds: int = 3,
    steps_per_round: int = 3,
    budget_s: float = 0.6,
    warm: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    set_threads: Callable[[int], None] = torch.set_num_threads,
) -> ThreadChoice:
    """Time `step` (one real training step) under each candidate thread count and keep the
    fastest: the median over rounds of the mean step time of a round, the candidates
    interleaved and their order rotated each round, so that a load that comes and goes is
    shared by all. First one untimed step at the largest count (one-time costs), then one
    timed warm-up step per candidate, unless `warm` (a re-check). After the first round,
    rounds stop once `budget_s` is spent. A single candidate (``--threads N``: nothing to
    choose, only the estimate's step time) is timed by its warm-up step alone.
    Candidates within TIE_TOLERANCE of the fastest tie; the fewest threads win a tie.

    A clear loser costs little on a busy machine (where a step with too many threads can
    take 50x longer): a candidate whose warm-up step is LOSER_FACTOR x slower than the
    fastest warm-up is not timed again; a round of a candidate stops after a step slower
    than LOSER_FACTOR x the best median so far; and after the first round candidates
    slower than that are timed no more."""
    candidates = list(dict.fromkeys(int(c) for c in candidates))
    if not candidates or min(candidates) < 1:
        raise ValueError(f"thread candidates must be counts >= 1, got {candidates}")
    start = clock()
    samples: dict[int, list[float]] = {count: [] for count in candidates}
    racing = list(candidates)
    if not warm:  # `warm`: measured before, so the pools and buffers exist already
        # The study's first step pays one-time costs (lazy initialisation, first
        # allocations, the OpenMP pool): untimed, at the largest count, so that no
        # candidate's warm-up carries them and is dropped or reported for them.
        set_threads(max(candidates))
        step()
        warmup = {}
        for count in candidates:
            set_threads(count)
            begin = clock()
            step()
            warmup[count] = clock() - begin
        # A warm-up step far slower than the fastest warm-up already shows a loser: its
        # warm-up is its only sample.
        racing = [c for c in candidates if warmup[c] <= LOSER_FACTOR * min(warmup.values())]
        for count in candidates:
            if count not in racing or len(candidates) == 1:
                samples[count].append(warmup[count])
        if len(candidates) == 1:  # nothing to choose (--threads N): its one timed step
            racing = []
    for round_index in range(rounds if racing else 0):
        shift = round_index % len(racing)
        for count in racing[shift:] + racing[:shift]:
            best = min((statistics.median(v) for v in samples.values() if v), default=math.inf)
            set_threads(count)
            times = []
            for _ in range(steps_per_round):
                begin = clock()
                step()
                times.append(clock() - begin)
                if times[-1] > LOSER_FACTOR * best:
                    break
            samples[count].append(sum(times) / len(times))
        # Judged against the racing candidates only: a machine that slowed down after the
        # warm-ups must not drop every candidate for a stale warm-up sample of a loser.
        best = min(statistics.median(samples[c]) for c in racing)
        racing = [c for c in racing if statistics.median(samples[c]) <= LOSER_FACTOR * best]
        if clock() - start > budget_s or len(racing) == 1:
            break
    medians = {count: statistics.median(values) for count, values in samples.items()}
    fastest = min(medians.values())
    best = min(c for c, s in medians.items() if s <= fastest * (1 + TIE_TOLERANCE))
    set_threads(best)
    cpus = max(candidates)
    return ThreadChoice(best, False, cpus, dict(sorted(medians.items())), clock() - start)


class StepWatch:
    """Watches the training step time and says when the thread count should be re-checked.

    Fed the wall time between consecutive steps; every WINDOW_STEPS steps it takes the
    median of the window (robust to the odd slow step: an evaluation, a page fault). The
    first window after a choice is its baseline; a later window whose median exceeds
    DEGRADED_FACTOR x baseline makes `observe` return True once (then a new baseline is
    taken after the next choice)."""

    def __init__(self, window: int = WINDOW_STEPS, factor: float = DEGRADED_FACTOR) -> None:
        self.window = self.initial_window = window
        self.factor = factor
        self.baseline: float | None = None
        self._times: list[float] = []

    def reset(self) -> None:
        """After a new choice: the next window becomes the baseline."""
        self.baseline = None
        self._times = []

    def observe(self, step_seconds: float) -> bool:
        self._times.append(step_seconds)
        if len(self._times) < self.window:
            return False
        median = statistics.median(self._times)
        self._times = []
        if self.baseline is None:
            self.baseline = median
            return False
        return median > self.factor * self.baseline

"""Unfinished studies: the epoch at which every member can be compared, and what is missing.

A run directory read while its study is still training, after a crash, or merged with a
run that stopped early holds members at different epochs. Comparing each member's last
epoch would pit epoch 2 against epoch 10 (and pair seeds across epochs in the t-tests), so
the report compares every member of a depth at the *comparable epoch*

    e = min over members m of a depth (with at least one row) of last_epoch(m),

where a member that diverged counts as having reached the planned epochs E (it stopped on
purpose and is judged as diverged). Members with no row at all are listed as missing. The
study is finished at a depth when e = E and nothing is missing. Pure functions on the
metrics table and the members block of config.json (docs/run-directory.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Completion:
    """How far one depth of a study got."""

    depth: int | None
    planned: int  # epochs asked for (config.epochs)
    epoch: int  # the comparable epoch (0 when no member has a row)
    missing: tuple[str, ...]  # members short of `planned`: "relu lr=0.001 seed 1 (epochs 3-4)"

    @property
    def finished(self) -> bool:
        return self.epoch == self.planned and not self.missing


def _depth(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _key(depth: object, activation: object, lr: object, seed: object) -> tuple:
    return (_depth(depth), str(activation), float(lr), int(seed))


def completion(metrics: pd.DataFrame, members: Sequence[dict], planned: int) -> list[Completion]:
    """One Completion per depth (in the order the members list them).

    `members` are the expected members (config.json's "members": dicts with depth,
    activation, lr, seed); members found only in `metrics` count as expected too."""
    reached: dict[tuple, int] = {}
    for key in (_key(m.get("depth"), m["activation"], m["lr"], m["seed"]) for m in members):
        reached.setdefault(key, 0)
    columns = ["depth", "activation", "lr", "seed", "epoch", "status"]
    for depth, activation, lr, seed, epoch, status in metrics[columns].itertuples(index=False):
        key = _key(depth, activation, lr, seed)
        last = planned if status == "diverged" else int(epoch)
        reached[key] = max(reached.get(key, 0), last)
    depths = list(dict.fromkeys(key[0] for key in reached))
    out = []
    for depth in depths:
        mine = {key: last for key, last in reached.items() if key[0] == depth}
        started = [last for last in mine.values() if last > 0]
        epoch = min(started) if started else 0
        missing = tuple(
            f"{_label(key)} ({_span(last, planned)})"
            for key, last in mine.items()
            if last < planned
        )
        out.append(Completion(depth, planned, epoch, missing))
    return out


def _label(key: tuple) -> str:
    depth, activation, lr, seed = key
    text = f"{activation} lr={lr:g} seed {seed}"
    return text if depth is None else f"{text} depth {depth}"


def _span(last: int, planned: int) -> str:
    if last == 0:
        return "no epoch"
    if last + 1 == planned:
        return f"epoch {planned}"
    return f"epochs {last + 1}-{planned}"


def at_comparable_epoch(frame: pd.DataFrame, completions: Sequence[Completion]) -> pd.DataFrame:
    """The rows of `frame` (metrics or diagnostics) up to each depth's comparable epoch."""
    limit = {c.depth: c.epoch for c in completions}
    keep = [
        int(epoch) <= limit.get(_depth(depth), 0)
        for depth, epoch in zip(frame["depth"], frame["epoch"], strict=True)
    ]
    return frame[keep].reset_index(drop=True)


def unfinished_text(completions: Sequence[Completion], most: int = 6) -> str:
    """One sentence for reports and tables; "" when every depth is finished:
    "unfinished: epoch 2 of 4, missing relu lr=0.001 seed 1 (epochs 3-4)"."""
    parts = []
    for c in completions:
        if c.finished:
            continue
        where = "" if c.depth is None else f"depth {c.depth}: "
        missing = ", ".join(c.missing[:most])
        if len(c.missing) > most:
            missing += f" and {len(c.missing) - most} more"
        parts.append(
            f"{where}epoch {c.epoch} of {c.planned}" + (f", missing {missing}" if missing else "")
        )
    return "unfinished: " + "; ".join(parts) if parts else ""

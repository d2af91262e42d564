"""The report's tables as typed cells: one model for report.html, report.md and the terminal.

A `Table` has `Column`s (a key, a title, whether it holds numbers: numbers are
right-aligned everywhere) and rows of `Cell`s (the value, its display text, and whether it is
emphasised, e.g. the selected learning rate). The renderers (actlab.report.page) escape the
text for their format; nothing here is markup, and no renderer guesses a column's type from
its text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from actlab.report import stats
from actlab.report.text import (
    _confidence,
    _depth,
    _missing,
    _pp_short,
    _rows_at,
    _signed,
    _value_text,
    ci_num,
    ci_pct,
    lr_text,
    num,
    pct,
    pvalue,
    signed_pp,
)

if TYPE_CHECKING:
    from actlab.report.render import Analysis


@dataclass(frozen=True)
class Cell:
    """One table cell: `text` as shown, `value` the number or word behind it."""

    text: str
    value: object = None
    strong: bool = False  # emphasised: bold in HTML and Markdown


@dataclass(frozen=True)
class Column:
    key: str  # stable name, e.g. "acc" (titles change: "final" -> "last common epoch")
    title: str
    numeric: bool = False  # right-aligned

    @property
    def css(self) -> str:
        return "num" if self.numeric else ""


@dataclass
class Table:
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    css_id: str = ""

    def add(self, *cells: Cell | str) -> None:
        """Append a row; a plain string is a cell whose value is its text."""
        row = [c if isinstance(c, Cell) else Cell(c, c) for c in cells]
        if len(row) != len(self.columns):
            raise ValueError(f"{len(row)} cells for {len(self.columns)} columns")
        self.rows.append(row)

    def has(self, key: str) -> bool:
        return any(c.key == key for c in self.columns)

    def select(self, keys: Sequence[str]) -> Table:
        """The columns named in `keys` that the table has, in the order of `keys`."""
        index = {c.key: i for i, c in enumerate(self.columns)}
        chosen = [index[k] for k in keys if k in index]
        return Table(
            [self.columns[i] for i in chosen],
            [[row[i] for i in chosen] for row in self.rows],
            self.css_id,
        )

    @property
    def header(self) -> list[str]:
        return [c.title for c in self.columns]

    def texts(self) -> list[list[str]]:
        return [[cell.text for cell in row] for row in self.rows]

    def numeric(self) -> list[bool]:
        """Which columns are right-aligned (none in a table without rows)."""
        return [bool(self.rows) and c.numeric for c in self.columns]


def _columns(*spec: tuple[str, str, bool]) -> list[Column]:
    return [Column(key, title, numeric) for key, title, numeric in spec]


def _depth_cell(depth: object) -> Cell:
    return Cell(str(_depth(depth)), _depth(depth))


def _number(value: object, text: str) -> Cell:
    return Cell(text, None if _missing(value) else value)


# --- the summary ----------------------------------------------------------------------------


def summary(analysis: Analysis) -> Table:
    """One row per arm (and depth), best first. Below stats.SMALL_N seeds an arm's interval
    is marked with its degrees of freedom, and a "per seed" column shows the values the mean
    and interval come from."""
    frame = analysis.summary
    depth_column = any(_depth(d) is not None for d in frame["depth"])
    small = any(2 <= n < stats.SMALL_N for n in frame["n"])
    final = "last common epoch" if analysis.unfinished else "final"
    spec = [("depth", "depth", True)] if depth_column else []
    spec += [("rank", "rank", True), ("activation", "activation", False), ("lr", "lr", True),
             ("seeds", "seeds", True), ("acc", f"{final} test acc %", True),
             ("std", "± SD", True), ("ci", "95% CI", True)]  # fmt: skip
    if small:
        spec.append(("per_seed", "per seed %", False))
    spec += [("best_acc", "best-epoch test acc %", True), ("loss", f"{final} test loss", True),
             ("loss_ci", "95% CI (loss)", True), ("group", "group", False),
             ("diverged", "diverged", True)]  # fmt: skip
    table = Table(_columns(*spec), css_id="summary-table")
    for row in frame.itertuples():
        interval = ci_pct(row.final_test_acc_ci_low, row.final_test_acc_ci_high)
        if 2 <= row.n < stats.SMALL_N:
            interval += f" ({row.n - 1} df!)"
        cells = [_depth_cell(row.depth)] if depth_column else []
        cells += [
            Cell(rank_text(row.rank, row.n, row.n_diverged), None if _missing(row.rank) else row.rank),
            Cell(row.arm, row.arm),
            Cell(lr_text(row.lr), row.lr),
            Cell(str(row.n), row.n),
            _number(row.final_test_acc_mean, pct(row.final_test_acc_mean)),
            _number(row.final_test_acc_std, pct(row.final_test_acc_std)),
            Cell(interval, (row.final_test_acc_ci_low, row.final_test_acc_ci_high)),
        ]  # fmt: skip
        if small:
            cells.append(Cell(per_seed_text(analysis, _depth(row.depth), row.arm)))
        group = row.group if isinstance(row.group, str) and row.group else "–"
        cells += [
            _number(row.best_test_acc_mean, pct(row.best_test_acc_mean)),
            _number(row.final_test_loss_mean, num(row.final_test_loss_mean)),
            Cell(ci_num(row.final_test_loss_ci_low, row.final_test_loss_ci_high),
                 (row.final_test_loss_ci_low, row.final_test_loss_ci_high)),
            Cell(group, group),
            Cell(str(row.n_diverged), row.n_diverged),
        ]  # fmt: skip
        table.add(*cells)
    return table


def summary_note(analysis: Analysis) -> str:
    """What the summary table's intervals and letters mean, with the small-n caution."""
    note = (
        "Mean over seeds of non-diverged members; std with ddof=1; 95% CI from the t "
        "distribution, clipped to 0-100%; ranked by the mean with each diverged member counted "
        "as 0%. Activations that share a group letter were not shown to differ at 5% "
        "(paired sign-flip tests over seeds, Holm-corrected over all pairs); that is not evidence that "
        "they are equal (the verdict says which pairs are practically equivalent, by TOST "
        f'within ±{analysis.run.config.min_gap:g} pp). "a" is the best group. Best-epoch '
        "accuracy picks the epoch on the test split and is optimistic."
    )
    if any(2 <= n < stats.SMALL_N for n in analysis.summary["n"]):
        note += (
            f' An interval marked "df!" comes from fewer than {stats.SMALL_N} seeds: with so '
            "few degrees of freedom its width rests on the chance spread of the values shown "
            "beside it, and a second run can fall outside it."
        )
    return note


def rank_text(rank: object, n: int, n_diverged: int) -> str:
    """An integer rank (1 is best); an arm with no member left to rank says why."""
    all_diverged = bool(n_diverged and not n)
    if not _missing(rank):  # an arm whose members all diverged ranks last, as failures
        return str(int(rank)) + (" (all diverged)" if all_diverged else "")
    return "– (all diverged)" if all_diverged else "–"


def per_seed_text(analysis: Analysis, depth: int | None, arm: str) -> str:
    """The final test accuracies of an arm's finished members, by seed: "88.13, 88.41, 87.75"."""
    members = _rows_at(analysis.arms, depth)
    members = members[(members["arm"] == arm) & ~members["diverged"]].sort_values("seed")
    return ", ".join(pct(v) for v in members["final_test_acc"])


# --- paired differences ---------------------------------------------------------------------


def pairs(analysis: Analysis) -> Table:
    """One row per pair of arms of a depth: the paired difference, its tests and reading."""
    depth_column = any(_depth(d) is not None for d in analysis.pairs["depth"])
    gap_pp = analysis.run.config.min_gap
    spec = [("depth", "depth", True)] if depth_column else []
    spec += [("comparison", "comparison", False), ("seeds", "seeds", True),
             ("difference", "difference", True), ("ci", "Holm-level CI (pp)", True), ("p", "p", True),
             ("p_holm", "p (Holm)", True), ("significant", "significant at 5%", False),
             ("detectable_gap", "detectable gap (pp)", True),
             ("seeds_needed", f"seeds for {gap_pp:g} pp", True),
             ("tost_p_holm", "TOST p (Holm)", True), ("reading", "reading", False)]  # fmt: skip
    table = Table(_columns(*spec), css_id="pairs-table")
    for row in analysis.pairs.itertuples():
        ci = "n/a" if _missing(row.ci_low) else "too few seeds"
        if not _missing(row.ci_low) and math.isfinite(row.ci_low):
            ci = f"[{_signed(row.ci_low)}, {_signed(row.ci_high)}] ({_confidence(row.ci_confidence)})"
        significant = "–" if _missing(row.p_holm) else ("yes" if row.significant else "no")
        seeds = row.seeds_needed
        seeds_text = (
            "–"
            if _missing(seeds)
            else (f"> {stats.MAX_SEEDS}" if math.isinf(seeds) else f"{seeds:.0f}")
        )
        cells = [_depth_cell(row.depth)] if depth_column else []
        cells += [
            Cell(f"{row.a} − {row.b}", (row.a, row.b)),
            Cell(str(row.n), row.n),
            _number(row.mean_diff, signed_pp(row.mean_diff)),
            Cell(ci, (row.ci_low, row.ci_high)),
            _number(row.p, pvalue(row.p)),
            _number(row.p_holm, pvalue(row.p_holm)),
            Cell(significant, significant),
            _number(row.detectable_gap, _pp_short(row.detectable_gap)),
            _number(seeds, seeds_text),
            _number(row.tost_p_holm, pvalue(row.tost_p_holm)),
            Cell(reading(row), reading(row)),
        ]
        table.add(*cells)
    return table


def reading(pair: object) -> str:
    """The verdict's word for a pair (see render._depth_verdict)."""
    if _missing(pair.p_holm):
        return "–"
    if pair.significant:
        return "different, within the min gap" if pair.equivalent else "different"
    return "practically equivalent" if pair.equivalent else "not resolved"


# --- members, learning rates, timings -------------------------------------------------------


def members(analysis: Analysis) -> Table:
    """One row per trained member: its final and best numbers and its status."""
    results = analysis.results
    depth_column = any(_depth(d) is not None for d in results["depth"])
    has_val = results["final_val_acc"].notna().any()
    spec = [("depth", "depth", True)] if depth_column else []
    spec += [("activation", "activation", False), ("lr", "lr", True), ("seed", "seed", True),
             ("epochs", "epochs", True), ("train_loss", "final train loss", True),
             ("test_loss", "final test loss", True), ("acc", "final test acc %", True),
             ("best_acc", "best test acc %", True), ("best_epoch", "best epoch", True)]  # fmt: skip
    if has_val:
        spec.append(("val_acc", "final val acc %", True))
    spec.append(("status", "status", False))
    table = Table(_columns(*spec), css_id="members-table")
    epochs = analysis.run.config.epochs
    ordered = results.assign(
        _d=results["depth"].map(lambda d: -1 if d is None or pd.isna(d) else d)
    )
    for row in ordered.sort_values(["_d", "activation", "lr", "seed"]).itertuples():
        status = f"diverged at epoch {row.diverged_epoch:.0f}" if row.diverged else "ok"
        if not row.diverged and row.epochs < epochs:
            status = f"unfinished: epoch {row.epochs} of {epochs}"
        best_epoch = "–" if _missing(row.best_epoch) else f"{row.best_epoch:.0f}"
        cells = [_depth_cell(row.depth)] if depth_column else []
        cells += [
            Cell(row.activation, row.activation), Cell(lr_text(row.lr), row.lr),
            Cell(str(row.seed), row.seed), Cell(str(row.epochs), row.epochs),
            _number(row.final_train_loss, num(row.final_train_loss)),
            _number(row.final_test_loss, num(row.final_test_loss)),
            _number(row.final_test_acc, pct(row.final_test_acc)),
            _number(row.best_test_acc, pct(row.best_test_acc)),
            _number(row.best_epoch, best_epoch),
        ]  # fmt: skip
        if has_val:
            cells.append(_number(row.final_val_acc, pct(row.final_val_acc)))
        cells.append(Cell(status, status))
        table.add(*cells)
    return table


def selection(analysis: Analysis) -> Table:
    """Validation accuracy per activation and lr, the selected lr emphasised."""
    sensitivity = analysis.sensitivity
    lrs = sorted(sensitivity["lr"].unique())
    depth_column = any(_depth(d) is not None for d in sensitivity["depth"])
    spec = [("depth", "depth", True)] if depth_column else []
    spec.append(("activation", "activation", False))
    spec += [(f"val_acc_{lr_text(lr)}", f"val acc % at lr {lr_text(lr)}", True) for lr in lrs]
    spec.append(("selected_lr", "selected lr", True))
    table = Table(_columns(*spec), css_id="lr-table")
    for (depth, activation), group in sensitivity.groupby(
        ["depth", "activation"], dropna=False, sort=False
    ):
        chosen = None
        if analysis.selected is not None:
            match = _rows_at(analysis.selected, _depth(depth))
            match = match[match["activation"] == activation]
            chosen = float(match["lr"].iloc[0]) if len(match) else None
        cells = [_depth_cell(depth)] if depth_column else []
        cells.append(Cell(activation, activation))
        for lr in lrs:
            value = group.loc[group["lr"] == lr]
            mean = value["mean"].iloc[0] if len(value) else None
            text = pct(mean) if len(value) else "–"
            if len(value) and value["n_diverged"].iloc[0]:
                text += f" ({value['n_diverged'].iloc[0]} diverged)"
            cells.append(Cell(text, None if _missing(mean) else mean, strong=chosen == lr))
        cells.append(Cell(lr_text(chosen) if chosen is not None else "– (select final)", chosen))
        table.add(*cells)
    return table


def timings(analysis: Analysis) -> Table:
    """Epoch times per stacked model (all its members train together)."""
    metrics = analysis.run.metrics
    table = Table(
        _columns(("run", "run", False), ("depth", "depth", True), ("members", "members", True),
                 ("epochs", "epochs", True), ("mean_s", "mean epoch s", True),
                 ("total_s", "total s", True), ("member_epoch_s", "s per member-epoch", True)),
        css_id="timings-table",
    )  # fmt: skip
    for (run, depth), group in metrics.groupby(["run", "depth"], dropna=False, sort=False):
        epochs = group.drop_duplicates("epoch")["epoch_time_s"]
        count = group.groupby(["activation", "lr", "seed"]).ngroups
        mean, total = epochs.mean(), epochs.sum()
        table.add(
            analysis.run.paths[int(run)].name, Cell(str(_depth(depth) or "–"), _depth(depth)),
            Cell(str(count), count), Cell(str(len(epochs)), len(epochs)),
            Cell(f"{mean:.2f}", mean), Cell(f"{total:.1f}", total),
            Cell(f"{mean / max(1, count):.3f}", mean / max(1, count)),
        )  # fmt: skip
    return table


# --- setup ----------------------------------------------------------------------------------


def _settings(first: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(_columns(("name", first, False), ("value", "value", False)))
    for name, value in rows:
        table.add(name, Cell(_value_text(value), value))
    return table


def config_table(analysis: Analysis) -> Table:
    return _settings("setting", list(analysis.run.config.to_dict().items()))


def environment_table(analysis: Analysis) -> Table:
    """The environment of the run; one column per run directory when they differ."""
    environments = analysis.run.environments or [analysis.run.environment]
    keys = list(dict.fromkeys(k for env in environments for k in env))
    distinct = {tuple(sorted(((k, str(v)) for k, v in e.items()), key=str)) for e in environments}
    if len(distinct) <= 1:
        return _settings("", [(key, environments[0].get(key)) for key in keys])
    names = [p.name for p in analysis.run.paths]
    table = Table(_columns(("name", "", False), *((n, n, False) for n in names)))
    for key in keys:
        table.add(key, *(Cell(_value_text(env.get(key)), env.get(key)) for env in environments))
    return table


def dataset_table(analysis: Analysis) -> Table:
    return _settings("", list(analysis.run.dataset.items()))


# --- (header, rows of text), as the tests and scripts read the tables -----------------------


def summary_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    table = summary(analysis)
    return table.header, table.texts()


def pair_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    table = pairs(analysis)
    return table.header, table.texts()


def member_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    table = members(analysis)
    return table.header, table.texts()

"""`actlab report`: rebuild report.html and report.md, print the summary and the verdict.

The terminal shows the report's own model (actlab.report.render.analyse, the summary table
of actlab.report.tables): the numbers on the screen are the numbers in report.html."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from actlab.cli.base import EXIT_OK, add_command

if TYPE_CHECKING:
    from actlab.report.render import Analysis
    from actlab.study.store import RunData

# The summary table's columns a terminal shows (report.html has them all).
TERMINAL_COLUMNS = (
    "depth", "rank", "activation", "lr", "seeds", "acc", "std", "ci", "per_seed", "group",
    "diverged",
)  # fmt: skip


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "report",
        "Rebuild report.html and report.md from one or more run directories; print the "
        "summary and the verdict.",
        "  actlab report runs/compare-fashion-mnist\n"
        "  actlab report runs/a runs/b -o merged.html   # seeds of one study, pooled\n",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None, help="HTML file; default RUN_DIR/report.html")
    p.add_argument(
        "--min-gap",
        type=float,
        default=None,
        metavar="PP",
        help="the smallest accuracy gap that matters, in percentage points; default: the one "
        "the run recorded",
    )
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from actlab.report.render import with_min_gap, write_run_report
    from actlab.study.store import merge_runs
    from actlab.study.unfinished import completion, unfinished_text

    run = with_min_gap(merge_runs(args.run_dirs), args.min_gap)
    path = write_run_report(run, args.output)
    for problem in run.problems:
        print(f"actlab: warning: {problem}", file=sys.stderr)
    if len(run.paths) > 1:
        print(merge_line(run))
    unfinished = unfinished_text(completion(run.metrics, run.members, run.config.epochs))
    if unfinished:  # the report says so too; a user reading the terminal should know
        print(f"actlab: note: {unfinished}; compared at the last common epoch", file=sys.stderr)
    if run.writing is not None and args.output is None:
        print(
            f"actlab: note: {run.path} is being written by another actlab process (pid "
            f"{run.writing}); wrote {path.name}: report.html is the study's own, written "
            "when it ends",
            file=sys.stderr,
        )
    print_summary(run)
    print_verdict(run)
    print(path)
    print(path.with_suffix(".md"))
    return EXIT_OK


def print_summary(run: RunData) -> None:
    """The report's summary table (and the lr chosen on the validation split), in the words
    of the study's task: accuracy for a classifier, bits per character for a language model
    (actlab.report.loss_report)."""
    from actlab.report.render import analyse

    if not run.config.task.higher_is_better:
        print(loss_summary_text(run))
        return
    analysis = analyse(run)
    print(summary_text(analysis))
    if analysis.selected is not None:
        print(selection_line(analysis))


def loss_summary_text(run: RunData) -> str:
    """A loss-scored study's summary table (actlab.report.loss_report), for a terminal."""
    from actlab.report import page
    from actlab.report.loss_report import loss_analysis, summary_table

    return page.to_terminal(summary_table(loss_analysis(run)))


def summary_text(analysis: Analysis) -> str:
    """The report's summary table for a terminal: its TERMINAL_COLUMNS (the verdict printed
    below it gives the caution for few seeds)."""
    from actlab.report import page, tables

    return page.to_terminal(tables.summary(analysis).select(TERMINAL_COLUMNS))


def selection_line(analysis: Analysis) -> str:
    """Each activation's lr as chosen on the validation split (the report's choice,
    analysis.selected; see stats.select_lr)."""
    from actlab.report.text import _depth, lr_text

    parts = []
    for row in analysis.selected.itertuples():
        depth = "" if _depth(row.depth) is None else f"depth {_depth(row.depth)} "
        parts.append(
            f"{depth}{row.activation} lr={lr_text(row.lr)} (val acc {100 * row.score:.2f}%)"
        )
    return "lr chosen on the validation split: " + ", ".join(parts)


def print_verdict(run: RunData) -> None:
    """The report's verdict (in the words of the study's task), wrapped for a terminal."""
    import textwrap

    from actlab.report.render import verdict_of

    print("verdict:")
    for paragraph in verdict_of(run):
        print(
            textwrap.fill(
                paragraph,
                width=96,
                initial_indent="  ",
                subsequent_indent="  ",
                break_on_hyphens=False,
            )
        )


def merge_line(run: RunData) -> str:
    """``merged 2 runs of one study: runs/a (seeds 0, 1), runs/b (seed 2): 3 seeds``."""
    parts = []
    for index, path in enumerate(run.paths):
        seeds = sorted(set(run.metrics.loc[run.metrics["run"] == index, "seed"]))
        word = "seed" if len(seeds) == 1 else "seeds"
        parts.append(f"{path} ({word} {', '.join(map(str, seeds)) or 'none'})")
    total = run.metrics["seed"].nunique()
    return (
        f"merged {len(run.paths)} runs of one study: {', '.join(parts)}; the report pools "
        f"{total} seed{'s' if total != 1 else ''} (a seed in several runs is counted once)"
    )

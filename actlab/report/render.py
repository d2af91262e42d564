"""report.html and report.md, rebuilt from run directories alone.

The HTML is self-contained: inline CSS, charts as inline base64 PNG, no script and no
network, so it opens from a file years later. The Markdown carries the same summary (the
verdict and the tables, no charts) for pasting into an issue or a paper.

Accuracies are stored as fractions and shown as percentages with two decimals; intervals
are Student-t 95% intervals over seeds; groups come from paired sign-flip tests with Holm's
correction (see actlab/report/stats.py).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from actlab.errors import ConfigError, RunDirError
from actlab.report import plots, stats
from actlab.report.figure_png import png_with_text_layout
from actlab.report.tables import (  # noqa: F401 (the tables as text, for scripts and tests)
    member_rows,
    pair_rows,
    per_seed_text,
    rank_text,
    summary_note,
    summary_rows,
)
from actlab.report.text import (  # noqa: F401 (the report's number formats)
    _confidence,
    _depth,
    _depth_title,
    _missing,
    _pp_short,
    _rows_at,
    _seeds_text,
    _signed,
    ci_num,
    ci_pct,
    lr_text,
    num,
    p_is,
    pct,
    pvalue,
    signed_pp,
)
from actlab.report.verdict import (  # noqa: F401 (verdict: where it was)
    compared_text,
    images_in_test_set,
    selection_window,
    verdict,
)
from actlab.study import unfinished as completion
from actlab.study.store import RunData, merge_runs, write_text_atomic

CURVE_COLUMNS = ("train_loss", "test_loss", "test_acc")


@dataclass
class Analysis:
    """Everything the report shows, computed once from a RunData."""

    run: RunData
    results: pd.DataFrame  # stats.member_results
    selected: pd.DataFrame | None  # stats.select_lr, when --select val with several lrs
    arms: pd.DataFrame  # stats.arm_results
    summary: pd.DataFrame  # stats.summary_table joined with the ranking
    pairs: pd.DataFrame  # stats.pairwise
    sensitivity: pd.DataFrame | None  # stats.lr_sensitivity, when several lrs and a val split
    arm_of: dict[tuple, str]  # (depth, activation, lr) -> arm label
    findings: list[str] = field(default_factory=list)
    # How far each depth got; an unfinished study is compared at its comparable epoch.
    completions: list[completion.Completion] = field(default_factory=list)

    @property
    def unfinished(self) -> str:
        """'' for a finished study, else "unfinished: epoch e of E, missing ..."."""
        return completion.unfinished_text(self.completions)

    @property
    def depths(self) -> list[int | None]:
        return (
            list(dict.fromkeys(map(_depth, self.summary["depth"]))) if len(self.summary) else [None]
        )

    @property
    def n_seeds(self) -> int:
        return int(self.results["seed"].nunique()) if len(self.results) else 0


def analyse(run: RunData) -> Analysis:
    """Run the statistics of a report (pure: reads only `run`).

    An unfinished study (see actlab.study.unfinished) is analysed at each depth's comparable
    epoch: rows after it are left out, so that no member's epoch 4 meets another's epoch 2."""
    completions = completion.completion(run.metrics, run.members, run.config.epochs)
    if not all(c.finished for c in completions):
        diagnostics = run.diagnostics
        run = dataclasses.replace(
            run,
            metrics=completion.at_comparable_epoch(run.metrics, completions),
            diagnostics=None
            if diagnostics is None
            else completion.at_comparable_epoch(diagnostics, completions),
        )
    results = stats.member_results(run.metrics)
    several_lrs = results["lr"].nunique() > 1 if len(results) else False
    has_val = bool(len(results)) and results["val_score"].notna().any()
    selected = None
    if several_lrs and run.config.select == "val" and has_val:
        selected = stats.select_lr(results)
    arms = stats.arm_results(results, selected)
    summary = stats.summary_table(arms)
    ranking = stats.ranking(arms)
    pairs = stats.pairwise(arms, margin=run.config.min_gap / 100)  # pp -> accuracy fraction
    if len(summary):
        summary = summary.merge(
            ranking[["depth", "arm", "rank", "group", "tied_with_best"]].astype({"depth": object}),
            on=["depth", "arm"],
            how="left",
        ).sort_values(["depth", "rank"], na_position="last", key=_depth_sort_key)
    size = images_in_test_set(run)
    if len(summary) and size:  # the test set's binomial SE, see docs/statistics.md
        p = summary["final_test_acc_mean"].astype(float)
        summary["final_test_acc_test_se"] = (p * (1 - p) / size) ** 0.5
    sensitivity = stats.lr_sensitivity(results) if several_lrs and has_val else None
    arm_of = {
        (_depth(d), a, float(lr)): arm
        for d, a, lr, arm in arms[["depth", "activation", "lr", "arm"]]
        .drop_duplicates()
        .itertuples(index=False)
    }
    analysis = Analysis(run, results, selected, arms, summary, pairs, sensitivity, arm_of)
    analysis.completions = completions
    if run.diagnostics is not None and len(run.diagnostics):
        analysis.findings = _findings(run, arms)
    return analysis


def _findings(run: RunData, arms: pd.DataFrame) -> list[str]:
    """The diagnostics module's sentences, on the compared members only (selected lrs)."""
    compared = {
        (_depth(d), a, float(lr))
        for d, a, lr in arms[["depth", "activation", "lr"]].itertuples(index=False)
    }
    keys = zip(
        run.diagnostics["depth"], run.diagnostics["activation"], run.diagnostics["lr"], strict=True
    )
    diagnostics = run.diagnostics[[(_depth(d), a, float(lr)) in compared for d, a, lr in keys]]
    try:
        from actlab.engine.diagnostics import findings
    except (ImportError, AttributeError):  # the diagnostics module is optional here
        return []
    return list(findings(diagnostics, run.metrics))


def _depth_sort_key(column: pd.Series) -> pd.Series:
    if column.name == "depth":
        return column.map(lambda d: -1 if _depth(d) is None else int(d))
    return column


# --- writing ------------------------------------------------------------------------------


def write_report(
    run_dirs: Path | str | Sequence[Path | str],
    output: Path | None = None,
    *,
    min_gap: float | None = None,
) -> Path:
    """Read run directories (merged when several: same study, seeds pooled) and write
    report.html (default: in the first run directory) and report.md next to it.
    `min_gap` (pp) replaces the one recorded in config.json. Returns the HTML path. Raises
    RunDirError for a bad run directory or a merge of different studies."""
    paths = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    return write_run_report(with_min_gap(merge_runs(paths), min_gap), output)


def with_min_gap(run: RunData, min_gap: float | None) -> RunData:
    """`run` analysed with another smallest gap that matters (pp); None keeps the recorded one."""
    if min_gap is None:
        return run
    return dataclasses.replace(run, config=run.config.replace(min_gap=min_gap))


MARKDOWN_MARK = "<!-- written by actlab report -->"


def report_paths(output: Path | str | None, run_dir: Path) -> tuple[Path, Path]:
    """(HTML, Markdown) paths of a report: RUN_DIR/report.html by default, else `output`,
    which must end in .html or .htm; the Markdown goes beside it with the suffix .md.
    A Markdown file already there that actlab did not write is never overwritten."""
    html_path = Path(output) if output is not None else run_dir / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(
            f"-o {str(html_path)!r}: give a file name ending in .html (report.md is written "
            "beside it with the same name), e.g. -o paper.html"
        )
    if html_path.is_dir():
        raise ConfigError(f"-o {str(html_path)!r} is a directory; give a file name ending in .html")
    blocking = next((p for p in html_path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(
            f"-o {str(html_path)!r}: {blocking} is a file, not a folder; give a path in a folder"
        )
    md_path = html_path.with_suffix(".md")
    if md_path.exists() and not _written_by_actlab(md_path):
        raise ConfigError(
            f"{md_path} exists and was not written by actlab report; writing the report as "
            f"{html_path.name} would replace it: choose another -o name or move the file"
        )
    return html_path, md_path


def _written_by_actlab(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
    except IsADirectoryError:
        return False
    return first.startswith((MARKDOWN_MARK, "# actlab: "))


def verdict_of(run: RunData) -> list[str]:
    """The verdict's paragraphs for a run, in its task's words (a loss-scored study, such as
    a language model: actlab.report.loss_report)."""
    if not run.config.task.has_accuracy:
        from actlab.report.loss_report import loss_analysis
        from actlab.report.loss_report import verdict as loss_verdict

        return loss_verdict(loss_analysis(run))
    return verdict(analyse(run))


def write_run_report(run: RunData, output: Path | str | None = None) -> Path:
    """Write report.html and report.md for an already-read RunData; return the HTML path.
    Both are written atomically (a temp file renamed into place): a report killed while
    being written leaves the previous one whole.
    A run directory that was being written when it was read (`run.writing`: a study
    still training) gets report.unfinished.html/.md instead of report.html/.md: those
    are the study's own, written when it ends, and a slower report must never replace
    them with an older state. A study scored by a loss (a language model) has its own
    wording: actlab.report.loss_report."""
    if run.metrics.empty:
        raise RunDirError(
            f"{run.path} holds no metrics row (no epoch completed, or metrics.csv was "
            f"deleted or emptied); rerun the same `actlab compare` with --out {run.path}: it "
            "resumes (and restores rows from checkpoint.pt)"
        )
    if output is None and run.writing is not None:
        output = run.path / UNFINISHED_REPORT
    if not run.config.task.has_accuracy:
        from actlab.report.loss_report import write_loss_report

        return write_loss_report(run, output)
    html_path, md_path = report_paths(output, run.path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    from actlab.report import page

    model = page.build(analyse(run))  # one page model for both files
    write_text_atomic(html_path, page.to_html(model))
    write_text_atomic(md_path, page.to_markdown(model))
    if output is None:  # the run's own report: one written while it trained is outdated
        for stale in (
            run.path / UNFINISHED_REPORT,
            (run.path / UNFINISHED_REPORT).with_suffix(".md"),
        ):
            if stale.is_file() and _written_by_actlab_report(stale):
                stale.unlink()
    return html_path


UNFINISHED_REPORT = "report.unfinished.html"


def _written_by_actlab_report(path: Path) -> bool:
    if path.suffix == ".md":
        return _written_by_actlab(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        return "<title>actlab: " in handle.read(4096)


# --- charts -------------------------------------------------------------------------------


def charts(analysis: Analysis) -> list[tuple[str, str, Figure]]:
    """(section, caption, figure) for every chart of the report, in order."""
    out: list[tuple[str, str, Figure]] = []
    colors = _colors(analysis)
    metrics = analysis.run.metrics
    several_depths = len(analysis.depths) > 1
    for depth in analysis.depths:
        where = f" ({_depth_title(depth)})" if several_depths else ""
        rows = metrics if depth is None else metrics[metrics["depth"].map(_depth) == depth]
        if depth is None:
            rows = metrics[metrics["depth"].isna()]
        curves = {c: stats.curves(rows, c, analysis.arm_of) for c in CURVE_COLUMNS}
        if len(curves["test_acc"]):
            bands = plots.band_caption(list(curves["test_acc"]["n"]))
            out.append(("curves", f"Training curves{where}: mean over seeds; {bands}, "
                        "clipped to the metric's range",
                        plots.plot_training_curves(curves, colors)))  # fmt: skip
    activation_figure = _activation_figure(analysis)
    if activation_figure is not None:
        out.append(
            (
                "activations",
                "The compared activations and their first derivatives",
                activation_figure,
            )
        )
    for depth in analysis.depths:
        pairs = _rows_at(analysis.pairs, depth)
        if len(pairs) and pairs["ci_low"].notna().any():
            where = f" ({_depth_title(depth)})" if several_depths else ""
            out.append(("differences", f"Paired differences in final test accuracy{where}",
                        plots.plot_differences(pairs)))  # fmt: skip
    if analysis.sensitivity is not None:
        for depth in analysis.depths:
            sensitivity = _rows_at(analysis.sensitivity, depth)
            selected = None if analysis.selected is None else _rows_at(analysis.selected, depth)
            act_colors = plots.arm_colors(analysis.run.config.activations)
            where = f" ({_depth_title(depth)})" if several_depths else ""
            out.append(("lr", f"Validation accuracy vs learning rate{where}: mean over seeds; "
                        f"band: 95% CI with {plots.MIN_SEEDS_FOR_CI} seeds or more (none with fewer)",
                        plots.plot_lr_sensitivity(sensitivity, selected, act_colors)))  # fmt: skip
    if several_depths:
        out.append(("depth", "Final test accuracy vs depth; error bars: 95% CI with 3 seeds or "
                    "more, min-max over the seeds with 2, none with 1; clipped to 0-100%",
                    plots.plot_depth_study(analysis.summary, colors, analysis.arms)))  # fmt: skip
    diagnostics = _arm_diagnostics(analysis)
    if diagnostics is not None and len(diagnostics):
        for depth in analysis.depths:
            rows = _rows_at(diagnostics, depth)
            if not len(rows):
                continue
            where = f" ({_depth_title(depth)})" if several_depths else ""
            out.append(
                (
                    "diagnostics",
                    f"Weight-gradient norm per layer{where}: the {plots.GRADIENT_NORM_LABEL}, "
                    "mean over seeds",
                    plots.plot_gradient_norms(rows),
                )
            )
            if rows["dead_frac"].notna().any() or rows["saturated_frac"].notna().any():
                out.append(("diagnostics", f"Dead and saturated units of each hidden layer{where} "
                            "on the probe batch, mean over seeds (one line per layer)",
                            plots.plot_unit_health(rows, colors)))  # fmt: skip
    return out


def diagnostics_definitions() -> str:
    from actlab.engine import diagnostics

    return diagnostics.DEFINITIONS


def _colors(analysis: Analysis) -> dict[str, object]:
    """One colour per activation (in config order) everywhere; per arm when arms carry an lr."""
    arms = list(dict.fromkeys(analysis.arms["arm"])) if len(analysis.arms) else []
    by_activation = plots.arm_colors(analysis.run.config.activations)
    if all(arm in by_activation for arm in arms):
        return by_activation
    return plots.arm_colors(arms)


def _arm_diagnostics(analysis: Analysis) -> pd.DataFrame | None:
    """Diagnostics rows of the compared members, with `activation` replaced by the arm label."""
    diagnostics = analysis.run.diagnostics
    if diagnostics is None:
        return None
    keys = zip(diagnostics["depth"], diagnostics["activation"], diagnostics["lr"], strict=True)
    arm = [analysis.arm_of.get((_depth(d), a, float(lr))) for d, a, lr in keys]
    frame = diagnostics.assign(activation=arm)
    return frame[frame["activation"].notna()]


def _activation_figure(analysis: Analysis) -> Figure | None:
    try:
        from actlab.report.plots import plot_activations
    except ImportError:
        return None
    specs = list(dict.fromkeys(analysis.run.config.activations))
    try:
        return plot_activations(specs, (-5.0, 5.0), (0, 1))
    except Exception as error:  # a report must not fail on the illustration
        analysis.run.problems.append(f"activation plot skipped: {error}")
        return None


def figure_png(fig: Figure, dpi: int = 110) -> str:
    """The figure as a base64 PNG data string, carrying its drawn text layout (the
    report checker reads it: actlab.report.figure_png)."""
    png = png_with_text_layout(plots.plain_text(fig), dpi)
    return base64.b64encode(png).decode("ascii")


# --- pages ------------------------------------------------------------------------------


def render_html(analysis: Analysis) -> str:
    """report.html (templates/report.html.j2), charts included."""
    from actlab.report import page

    return page.to_html(page.build(analysis))


def render_markdown(analysis: Analysis) -> str:
    """report.md (templates/report.md.j2): the verdict and the tables, no charts."""
    from actlab.report import page

    return page.to_markdown(page.build(analysis, figures=False))


def _subtitle(analysis: Analysis) -> str:
    config = analysis.run.config
    model = f"{config.model.upper()} {'-'.join(map(str, config.hidden))}"
    if config.is_user_model:  # the user's own network: its reference and source hash
        digest = f" (source sha256 {config.model_sha256[:12]})" if config.model_sha256 else ""
        model = f"{config.model}{digest}"
    elif config.depths:
        model = f"{config.model.upper()} of depth {', '.join(map(str, config.depths))} (width {config.hidden[0]})"
    if config.model == "mlp" and analysis.run.dataset:
        from actlab.nn.mlp_builder import gated_words

        dataset = analysis.run.dataset
        model += gated_words(config, dataset["input_shape"], int(dataset["num_classes"]))
    text = (
        f"{model}, {config.optimizer} lr {', '.join(lr_text(lr) for lr in config.lrs)}, "
        f"batch {config.batch_size}, {config.epochs} epochs, seeds {', '.join(map(str, config.seeds))}"
    )
    return f"{text}; {analysis.unfinished.upper()}" if analysis.unfinished else text

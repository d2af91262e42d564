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
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from actlab.errors import ConfigError, RunDirError
from actlab.report import plots, stats
from actlab.report.figure_png import png_with_text_layout
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


def _depth(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


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
    if not run.config.task.higher_is_better:
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
    if not run.config.task.higher_is_better:
        from actlab.report.loss_report import write_loss_report

        return write_loss_report(run, output)
    html_path, md_path = report_paths(output, run.path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    analysis = analyse(run)
    write_text_atomic(html_path, render_html(analysis))
    write_text_atomic(md_path, render_markdown(analysis))
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


# --- numbers as text ----------------------------------------------------------------------


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(fraction: float, digits: int = 2) -> str:
    """0.87654 -> '87.65' (percent, no sign); NaN -> '–'."""
    return "–" if _missing(fraction) else f"{100 * fraction:.{digits}f}"


def num(value: float, digits: int = 4) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def pvalue(p: float) -> str:
    if _missing(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def p_is(p: float) -> str:
    """'= 0.0231' or '< 0.0001', for a sentence."""
    text = pvalue(p)
    return text if text.startswith("<") else f"= {text}"


def ci_pct(low: float, high: float) -> str:
    return "n/a (1 seed)" if _missing(low) else f"[{pct(low)}, {pct(high)}]"


def ci_num(low: float, high: float, digits: int = 4) -> str:
    return "n/a (1 seed)" if _missing(low) else f"[{num(low, digits)}, {num(high, digits)}]"


def signed_pp(diff: float) -> str:
    """+0.56 pp, -0.28 pp; a gap that rounds to zero is '0.00 pp', never '-0.00 pp'."""
    if _missing(diff):
        return "–"
    text = f"{100 * diff:+.2f}"
    return ("0.00" if text in ("+0.00", "-0.00") else text) + " pp"


def lr_text(lr: float) -> str:
    return f"{lr:g}"


def _depth_title(depth: int | None) -> str:
    return "" if depth is None else f"depth {depth}"


# --- the verdict --------------------------------------------------------------------------


def verdict(analysis: Analysis) -> list[str]:
    """The report's opening, in plain words with numbers: a list of paragraphs (the setup
    and its scope, one per depth, then the caveats). Every claim stands beside the interval
    that matches it (see stats.pairwise) and says no more than the seeds support."""
    if not len(analysis.summary):
        return ["No epoch was completed, so there is nothing to compare yet."]
    paragraphs = _unfinished_verdict(analysis)
    n = analysis.n_seeds
    config = analysis.run.config
    sentences = [
        f"{compared_text(analysis)} on {config.dataset}, {n} seed{'s' if n != 1 else ''} "
        f"each, {_plural(config.epochs, 'epoch')}; the accuracy compared is the final-epoch "
        "test accuracy."
    ]
    if analysis.selected is not None:
        sentences.append(
            "Each activation's learning rate was chosen on the validation split "
            f"(mean validation accuracy over {selection_window(analysis)}): "
            f"{chosen_lr_text(analysis.selected)}."
        )
    sentences.append(scope_text(analysis))
    paragraphs.append(" ".join(sentences))
    for depth in analysis.depths:
        paragraphs.append(" ".join(_depth_verdict(analysis, depth)))
    paragraphs.append(_test_set_caution(analysis))
    if 2 <= n < stats.SMALL_N:
        floor = stats.smallest_p(n)
        paragraphs.append(
            f"Caution: only {n} seeds. Every interval over seeds rests on {n - 1} degree"
            f"{'s' if n != 2 else ''} of freedom, so its width depends on the chance spread of "
            f"{n} values (the per-seed values are shown beside the means), and a sign-flip test "
            f"of {n} seeds cannot give p below 2/2^{n} = {floor:.3g}"
            + (", so no difference can be called significant." if floor >= stats.ALPHA else ".")
            + " Stacked seeds are cheap: run with --seeds 10 or more, or add seeds later and "
            "merge the runs with `actlab report RUN_A RUN_B`."
        )
    if n < 2:
        paragraphs.append(
            "With a single seed no confidence interval or significance test can be given, so "
            "these differences may be seed noise; run with --seeds 10 (the default), or add seeds "
            "later and merge the runs with `actlab report RUN_A RUN_B`."
        )
    diverged = analysis.results[analysis.results["diverged"]]
    if len(diverged):
        paragraphs.append(
            f"{_plural(len(diverged), 'member')} diverged: "
            + ", ".join(_member_text(row) for row in diverged.itertuples())
            + ". A diverged member is counted as a failure of its arm: it scores 0% accuracy "
            "in the ranking and in the paired tests (left out, an activation that diverges "
            "would be compared on its lucky seeds only); the summary's accuracy columns are "
            "over the members that finished."
        )
    return [p for p in paragraphs if p]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def chosen_lr_text(selected: pd.DataFrame) -> str:
    """Each activation's selected lr, per depth when there are several depths: "relu 0.001,
    tanh 0.003" or "depth 2: relu 0.003, tanh 0.003; depth 8: relu 0.001, tanh 0.001"."""
    depths = list(dict.fromkeys(map(_depth, selected["depth"])))
    parts = []
    for depth in depths:
        rows = _rows_at(selected, depth)
        chosen = ", ".join(f"{row.activation} {lr_text(row.lr)}" for row in rows.itertuples())
        parts.append(chosen if len(depths) == 1 else f"depth {depth}: {chosen}")
    return "; ".join(parts)


def images_in_test_set(run: RunData) -> int | None:
    """The number of test images, from dataset.json; None when it is not recorded."""
    size = (run.dataset or {}).get("test_size")
    return int(size) if isinstance(size, (int, float)) and size > 0 else None


def scope_text(analysis: Analysis) -> str:
    """What the seeds can and cannot speak for: one split, one budget, seeds only."""
    size = images_in_test_set(analysis.run)
    split = "one fixed train/test split" + (f" ({size} test images)" if size else "")
    epochs = _plural(analysis.run.config.epochs, "epoch")
    return (
        f"Scope: {split} and a budget of {epochs}; the seeds vary the initial weights and the "
        "batch order only, so every interval and test below is about that variation, not "
        "about another test set, dataset or training budget."
    )


# A test set below this size gets a caution: one image is more than 0.05 pp.
SMALL_TEST_SET = 2000


def _test_set_caution(analysis: Analysis) -> str:
    """The test set's own resolution and binomial sampling error, which more seeds do not
    shrink: sqrt(p (1 - p) / N) for an accuracy p on N test images."""
    size = images_in_test_set(analysis.run)
    if size is None:
        return ""
    best = analysis.summary["final_test_acc_mean"].dropna()
    if not len(best):
        return ""
    accuracy = float(best.iloc[0])
    se = math.sqrt(accuracy * (1 - accuracy) / size)
    text = (
        f"The test set has {size} images, so one image is {100 / size:.2g} pp, and an "
        f"accuracy of {pct(accuracy, 1)}% measured on it has a binomial sampling SE of "
        f"{100 * se:.1f} pp (sqrt(p(1-p)/N)) from the choice of those images, which more "
        "seeds do not shrink."
    )
    if size < SMALL_TEST_SET:
        text = (
            f"Caution: a small test set. {text} A gap of a few images may not hold on "
            "another test set of the same size."
        )
    return text


def compared_text(analysis: Analysis) -> str:
    """What is compared, counted and named: "4 activations (relu, sigmoid, tanh and
    leaky_relu)", or "4 activation-lr pairs (relu and tanh, each at lr 0.001 and 0.01)"
    when every (activation, lr) is an arm of its own."""
    arms = analysis.arms.drop_duplicates("arm") if len(analysis.arms) else analysis.arms
    activations = list(dict.fromkeys(arms["activation"])) if len(arms) else []
    lrs = sorted(dict.fromkeys(arms["lr"])) if len(arms) else []
    names = _and(activations)
    if len(arms) > len(activations):  # several lrs per activation, each its own arm
        each = "each " if len(activations) > 1 else ""
        return (
            f"{len(arms)} activation-lr pairs ({names}, {each}at lr "
            f"{_and([lr_text(lr) for lr in lrs])})"
        )
    noun = "activation" if len(activations) == 1 else "activations"
    return f"{len(activations)} {noun} ({names})"


def selection_window(analysis: Analysis) -> str:
    """The epochs whose validation accuracy was averaged to choose an lr, as they really
    were: "the last 3 epochs (8-10)", "the 2 epochs (1-2)", "epoch 1 only"."""
    epochs = analysis.results["epochs"] if len(analysis.results) else pd.Series([0])
    last = int(epochs.max()) if len(epochs) else 0
    window = min(stats.SELECTION_LAST_EPOCHS, last)
    if window <= 1:
        return f"epoch {last} only"
    first = last - window + 1
    if window < stats.SELECTION_LAST_EPOCHS:
        return f"all {window} epochs ({first}-{last})"
    return f"the last {window} epochs ({first}-{last})"


def _and(items: list[str]) -> str:
    items = [str(i) for i in items]
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _unfinished_verdict(analysis: Analysis) -> list[str]:
    """The first paragraph of an unfinished study's verdict (none for a finished one)."""
    if not analysis.unfinished:
        return []
    epochs = sorted({c.epoch for c in analysis.completions if c.epoch})
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else "the last epoch each depth reached"
    return [
        f"This study is {analysis.unfinished}. Every member is compared at {at}, the last "
        'epoch all of them completed, not at the final epoch: "final" below means that '
        "epoch. Finish the run (rerun the same `actlab compare`) for the final comparison."
    ]


def _depth_verdict(analysis: Analysis, depth: int | None) -> list[str]:
    """The highest-ranked arm of a depth against each other arm, each pair in one of four
    words: significantly better; better but by less than --min-gap (both tests pass);
    practically equivalent (TOST); or not resolved, with what the seeds could detect and
    the seeds to plan. Each beside the interval that matches it. "The best is X" only when X
    is significantly better than every other arm; else "Highest mean: X"."""
    rows = _rows_at(analysis.summary, depth).dropna(subset=["final_test_acc_mean"])
    if not len(rows):
        return []
    best = rows.iloc[0]
    pairs = _rows_at(analysis.pairs, depth)
    gap_pp = analysis.run.config.min_gap
    words: dict[str, list] = {"better": [], "small": [], "equivalent": [], "unresolved": [],
                              "behind": []}  # fmt: skip
    for arm in rows["arm"].iloc[1:]:
        pair = _pair_of(pairs, best.arm, arm)
        if pair is None or _missing(pair["p_holm"]):
            continue
        ahead = pair["a"] == best.arm or pair["mean_diff"] == 0
        if pair["significant"] and not ahead:
            words["behind"].append(_claim_text(arm, pair, best.arm))
        elif pair["significant"] and pair["equivalent"]:
            tost = _tost_text(pair, gap_pp, with_gap=False)
            words["small"].append(f"{_claim_text(arm, pair, best.arm)}; {tost}")
        elif pair["significant"]:
            words["better"].append(_claim_text(arm, pair, best.arm))
        elif pair["equivalent"]:
            words["equivalent"].append(f"{arm} ({_tost_text(pair, gap_pp)})")
        else:
            words["unresolved"].append((arm, pair))
    resolved = len(rows) > 1 and len(words["better"]) + len(words["small"]) == len(rows) - 1
    sentences = [_best_text(analysis, depth, best, resolved)]
    if words["better"]:
        sentences.append(
            f"It is significantly better than {_join([t + ')' for t in words['better']])}."
        )
    if words["small"]:
        sentences.append(
            f"It is significantly better than {_join([t + ')' for t in words['small']])}, but by "
            f"less than {gap_pp:g} pp: practically equivalent."
        )
    if words["equivalent"]:
        sentences.append(
            f"It is practically equivalent (within ±{gap_pp:g} pp) to {_join(words['equivalent'])}."
        )
    if words["behind"]:
        sentences.append(
            "On the seeds both have, it is significantly behind "
            f"{_join([t + ')' for t in words['behind']])}."
        )
    if words["unresolved"]:
        texts = [_claim_text(a, p, best.arm) + ")" for a, p in words["unresolved"]]
        sentences.append(
            f"It is not resolved against {_join(texts)}: the seeds show neither a difference "
            f"nor equivalence within ±{gap_pp:g} pp, so this is an open question, not a tie."
        )
        sentences.append(_power_sentence(words["unresolved"], gap_pp))
    if len(rows) == 1:
        sentences.append("It is the only activation compared.")
    return sentences


def _pair_of(pairs: pd.DataFrame, x: str, y: str) -> pd.Series | None:
    match = pairs[((pairs["a"] == x) & (pairs["b"] == y)) | ((pairs["a"] == y) & (pairs["b"] == x))]
    return match.iloc[0] if len(match) else None


def _best_text(analysis: Analysis, depth: int | None, best: pd.Series, resolved: bool) -> str:
    """'The best is X with 88.1% (95% CI over seeds [...])' when X is resolved against all
    the others, else 'Highest mean: X with ...'; a diverged seed's 0% is said."""
    prefix = "" if depth is None else f"At depth {depth}, "
    if _missing(best.final_test_acc_ci_low):
        where = "(one seed, no interval)."
    else:
        interval = ci_pct(best.final_test_acc_ci_low, best.final_test_acc_ci_high)
        where = f"(95% CI over seeds {interval}"
        if best.n < stats.SMALL_N:
            where += f" from {best.n} seeds: {_per_seed_text(analysis, depth, best.arm)}"
        where += ")."
    mean = f"{pct(best.final_test_acc_mean)}% {where}"
    if best.n_diverged:
        mean = (
            f"{pct(best.score_mean)}% counting its {_plural(int(best.n_diverged), 'diverged seed')}"
            f" as 0%, {pct(best.final_test_acc_mean)}% over the {best.n} that finished {where}"
        )
    text = f"{prefix}{'the best is' if resolved else 'highest mean:'} {best.arm} with {mean}"
    return text[0].upper() + text[1:]


def _failures_text(pair: pd.Series) -> str:
    """'; counting tanh's 1 diverged seed as 0%' when a member of the pair diverged."""
    parts = [
        f"{name}'s {_plural(int(count), 'diverged seed')}"
        for name, count in ((pair["a"], pair["n_failed_a"]), (pair["b"], pair["n_failed_b"]))
        if count
    ]
    return f"; counting {' and '.join(parts)} as 0%" if parts else ""


def _claim_text(arm: str, pair: pd.Series, best: str) -> str:
    """'tanh (gap +0.56 pp, Holm-level 99.2% CI [+0.31, +0.80], Holm p = 0.0039' (the
    caller closes the parenthesis). The gap is best - arm; the interval is the one that
    matches the word (see stats.pairwise)."""
    sign = 1 if pair["a"] == best else -1
    low, high = sorted((sign * pair["ci_low"], sign * pair["ci_high"]))
    level = f"Holm-level {_confidence(pair['ci_confidence'])} CI"
    if math.isinf(low) or math.isinf(high):
        interval = f"{int(pair['n'])} seeds are too few for a {level.replace(' CI', ' interval')}"
    else:
        interval = f"{level} [{_signed(low)}, {_signed(high)}]"
    return (
        f"{arm} (gap {signed_pp(sign * pair['mean_diff'])}, {interval}, Holm p "
        f"{p_is(pair['p_holm'])}{_failures_text(pair)}"
    )


def _tost_text(pair: pd.Series, gap_pp: float, with_gap: bool = True) -> str:
    """'gap +0.02 pp, Holm-level 96.7% CI [-0.10, +0.14] inside ±0.5 pp, TOST Holm p = 0.0020'
    (without the gap, and without the failures already said, after a difference claim)."""
    interval = f"[{_signed(pair['tost_low'])}, {_signed(pair['tost_high'])}]"
    gap = f"gap {signed_pp(pair['mean_diff'])}, " if with_gap else ""
    return (
        f"{gap}Holm-level {_confidence(pair['tost_confidence'])} CI {interval} inside "
        f"±{gap_pp:g} pp, TOST Holm p {p_is(pair['tost_p_holm'])}"
        + (_failures_text(pair) if with_gap else "")
    )


def _confidence(confidence: float) -> str:
    """0.99166 -> '99.2%', 0.9 -> '90%'."""
    text = f"{100 * confidence:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def _signed(fraction: float) -> str:
    """A signed difference in pp with two decimals, never '-0.00'."""
    text = f"{100 * fraction:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def _power_sentence(unresolved: list[tuple[str, pd.Series]], gap_pp: float) -> str:
    """What the seeds could detect and what to plan, per unresolved pair: "With 3 seeds,
    gaps below about 1.1 pp would be missed more often than 20% of the time ...; to detect 0.5 pp
    plan about 14 seeds, and about 9 to show equivalence within ±0.5 pp"."""
    names = len(unresolved) > 1
    seeds = {int(pair["n"]) for _, pair in unresolved}
    one_count = len(seeds) == 1

    def named(text: str, arm: str, n: int | None = None) -> str:
        label = [arm] if names else []
        label += [f"{n} seeds"] if n is not None and not one_count else []
        return f"{text} ({', '.join(label)})" if label else text

    level = unresolved[0][1]["level"]
    holm = f"the Holm level {stats.ALPHA:g}/{round(stats.ALPHA / level)} = {level:.3g}"
    missed, blind, plans, equivalence = [], [], [], []
    for arm, pair in unresolved:
        n = int(pair["n"])
        detectable = pair["detectable_gap"]
        if math.isinf(detectable):
            blind.append(n)
        elif detectable >= 1:
            missed.append(named("any gap the 0-100% scale allows", arm, n))
        else:
            missed.append(named(f"{_pp_short(detectable)} pp", arm, n))
        plans.append(named(_seeds_text(pair["seeds_needed"]), arm))
        equivalence.append(named(_seeds_text(pair["seeds_for_equivalence"]), arm))
    count = f"{seeds.pop()} seeds" if one_count else "the seeds at hand"
    parts = []
    if missed:
        parts.append(
            f"With {count}, gaps below about {_join_and(missed)} would be missed more often than "
            f"20% of the time (t-test power at {holm}, if the SD of the paired differences "
            "stays at the one observed)"
        )
    for n in sorted(set(blind)):
        parts.append(
            f"with {n} seeds no gap can be found at {holm}: a sign-flip test of {n} seeds "
            f"cannot give p below 2/2^{n} = {stats.smallest_p(n):.3g}"
        )
    parts.append(
        f"to detect {gap_pp:g} pp plan {_join_and(plans)}, and {_join_and(equivalence)} to show "
        f"equivalence within ±{gap_pp:g} pp (80% power at that level, from the 80% upper "
        "confidence limit of the observed SD, Browne 1995)"
    )
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _pp_short(fraction: float) -> str:
    """A gap in pp with two significant digits or so: 0.58, 3.3, 19."""
    if _missing(fraction):
        return "–"
    value = 100 * fraction
    if math.isinf(value):
        return "any"
    return f"{value:.2f}" if value < 1 else (f"{value:.1f}" if value < 10 else f"{value:.0f}")


def _seeds_text(count: float) -> str:
    if _missing(count):
        return "an unknown number of seeds"
    if math.isinf(count):
        return f"more than {stats.MAX_SEEDS} seeds"
    return f"about {int(count)} seeds"


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _per_seed_text(analysis: Analysis, depth: int | None, arm: str) -> str:
    """The final test accuracies of an arm's finished members, by seed: "88.13, 88.41, 87.75"."""
    members = _rows_at(analysis.arms, depth)
    members = members[(members["arm"] == arm) & ~members["diverged"]].sort_values("seed")
    return ", ".join(pct(v) for v in members["final_test_acc"])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "; ".join(items[:-1]) + "; and " + items[-1]


def _rows_at(frame: pd.DataFrame, depth: int | None) -> pd.DataFrame:
    if depth is None:
        return frame[frame["depth"].isna()]
    return frame[frame["depth"].map(_depth) == depth]


def _member_text(row: object) -> str:
    text = f"{row.activation} (lr {lr_text(row.lr)}, seed {row.seed}"
    if _depth(row.depth) is not None:
        text += f", depth {_depth(row.depth)}"
    return text + f", epoch {row.diverged_epoch:.0f})"


# --- tables as rows of text ---------------------------------------------------------------


def summary_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    """The summary table: one row per arm (and depth). Below stats.SMALL_N seeds an arm's
    interval is marked with its degrees of freedom, and a "per seed" column shows the values
    the mean and interval come from."""
    depth_column = any(_depth(d) is not None for d in analysis.summary["depth"])
    small = any(2 <= n < stats.SMALL_N for n in analysis.summary["n"])
    header = ["rank", "activation"]
    if depth_column:
        header.insert(0, "depth")
    header += ["lr", "seeds", "final test acc %", "± std", "95% CI"]
    if small:
        header.append("per seed %")
    header += ["best-epoch test acc %", "final test loss", "95% CI (loss)", "group", "diverged"]
    rows = []
    for row in analysis.summary.itertuples():
        cells = [rank_text(row.rank, row.n, row.n_diverged), row.arm]
        if depth_column:
            cells.insert(0, str(_depth(row.depth)))
        interval = ci_pct(row.final_test_acc_ci_low, row.final_test_acc_ci_high)
        if 2 <= row.n < stats.SMALL_N:
            interval += f" ({row.n - 1} df!)"
        cells += [lr_text(row.lr), str(row.n), pct(row.final_test_acc_mean),
                  pct(row.final_test_acc_std), interval]  # fmt: skip
        if small:
            cells.append(_per_seed_text(analysis, _depth(row.depth), row.arm))
        cells += [
            pct(row.best_test_acc_mean),
            num(row.final_test_loss_mean),
            ci_num(row.final_test_loss_ci_low, row.final_test_loss_ci_high),
            row.group if isinstance(row.group, str) and row.group else "–",
            str(row.n_diverged),
        ]
        rows.append(cells)
    if analysis.unfinished:  # the numbers are at the comparable epoch, not the final one
        header = [h.replace("final", "last common epoch") for h in header]
    return header, rows


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


def pair_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    depth_column = any(_depth(d) is not None for d in analysis.pairs["depth"])
    header = (["depth"] if depth_column else []) + [
        "comparison", "seeds", "difference", "Holm-level CI (pp)", "p", "p (Holm)",
        "significant at 5%",
    ]  # fmt: skip
    gap_pp = analysis.run.config.min_gap
    header += ["detectable gap (pp)", f"seeds for {gap_pp:g} pp", "TOST p (Holm)", "reading"]
    rows = []
    for row in analysis.pairs.itertuples():
        ci = "n/a" if _missing(row.ci_low) else "too few seeds"
        if not _missing(row.ci_low) and math.isfinite(row.ci_low):
            ci = f"[{_signed(row.ci_low)}, {_signed(row.ci_high)}] ({_confidence(row.ci_confidence)})"
        significant = "–" if _missing(row.p_holm) else ("yes" if row.significant else "no")
        cells = [f"{row.a} − {row.b}", str(row.n), signed_pp(row.mean_diff), ci,
                 pvalue(row.p), pvalue(row.p_holm), significant]  # fmt: skip
        seeds = row.seeds_needed
        seeds = (
            "–"
            if _missing(seeds)
            else (f"> {stats.MAX_SEEDS}" if math.isinf(seeds) else f"{seeds:.0f}")
        )
        cells += [_pp_short(row.detectable_gap), seeds, pvalue(row.tost_p_holm), _reading(row)]
        rows.append(([str(_depth(row.depth))] if depth_column else []) + cells)
    return header, rows


def _reading(pair: object) -> str:
    """The verdict's word for a pair (see _depth_verdict)."""
    if _missing(pair.p_holm):
        return "–"
    if pair.significant:
        return "different, within the min gap" if pair.equivalent else "different"
    return "practically equivalent" if pair.equivalent else "not resolved"


def member_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    results = analysis.results
    depth_column = any(_depth(d) is not None for d in results["depth"])
    header = (["depth"] if depth_column else []) + [
        "activation", "lr", "seed", "epochs", "final train loss", "final test loss",
        "final test acc %", "best test acc %", "best epoch", "final val acc %", "status",
    ]  # fmt: skip
    has_val = results["final_val_acc"].notna().any()
    if not has_val:
        header.remove("final val acc %")
    rows = []
    ordered = results.assign(
        _d=results["depth"].map(lambda d: -1 if d is None or pd.isna(d) else d)
    )
    for row in ordered.sort_values(["_d", "activation", "lr", "seed"]).itertuples():
        status = f"diverged at epoch {row.diverged_epoch:.0f}" if row.diverged else "ok"
        if not row.diverged and row.epochs < analysis.run.config.epochs:
            status = f"unfinished: epoch {row.epochs} of {analysis.run.config.epochs}"
        cells = [row.activation, lr_text(row.lr), str(row.seed), str(row.epochs),
                 num(row.final_train_loss), num(row.final_test_loss), pct(row.final_test_acc),
                 pct(row.best_test_acc), "–" if _missing(row.best_epoch) else f"{row.best_epoch:.0f}",
                 *([pct(row.final_val_acc)] if has_val else []), status]  # fmt: skip
        rows.append(([str(_depth(row.depth))] if depth_column else []) + cells)
    return header, rows


def selection_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    """Validation accuracy per activation and lr, the selected lr marked."""
    sensitivity = analysis.sensitivity
    lrs = sorted(sensitivity["lr"].unique())
    depth_column = any(_depth(d) is not None for d in sensitivity["depth"])
    header = (["depth"] if depth_column else []) + ["activation"]
    header += [f"val acc % at lr {lr_text(lr)}" for lr in lrs] + ["selected lr"]
    rows = []
    for (depth, activation), group in sensitivity.groupby(
        ["depth", "activation"], dropna=False, sort=False
    ):
        chosen = None
        if analysis.selected is not None:
            match = _rows_at(analysis.selected, _depth(depth))
            match = match[match["activation"] == activation]
            chosen = float(match["lr"].iloc[0]) if len(match) else None
        cells = [str(_depth(depth))] if depth_column else []
        cells.append(activation)
        for lr in lrs:
            value = group.loc[group["lr"] == lr]
            text = pct(value["mean"].iloc[0]) if len(value) else "–"
            if len(value) and value["n_diverged"].iloc[0]:
                text += f" ({value['n_diverged'].iloc[0]} diverged)"
            cells.append(f"<b>{text}</b>" if chosen == lr else text)
        cells.append(lr_text(chosen) if chosen is not None else "– (select final)")
        rows.append(cells)
    return header, rows


def timing_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    """Epoch times per stacked model (all its members train together)."""
    metrics = analysis.run.metrics
    header = ["run", "depth", "members", "epochs", "mean epoch s", "total s", "s per member-epoch"]
    rows = []
    for (run, depth), group in metrics.groupby(["run", "depth"], dropna=False, sort=False):
        epochs = group.drop_duplicates("epoch")["epoch_time_s"]
        members = group.groupby(["activation", "lr", "seed"]).ngroups
        rows.append([
            analysis.run.paths[int(run)].name, str(_depth(depth) or "–"), str(members),
            str(len(epochs)), f"{epochs.mean():.2f}", f"{epochs.sum():.1f}",
            f"{epochs.mean() / max(1, members):.3f}",
        ])  # fmt: skip
    return header, rows


def config_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    config = analysis.run.config.to_dict()
    return ["setting", "value"], [[name, _value_text(value)] for name, value in config.items()]


def environment_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    environments = analysis.run.environments or [analysis.run.environment]
    names = [p.name for p in analysis.run.paths]
    keys = list(dict.fromkeys(k for env in environments for k in env))
    distinct = [
        dict(e) for e in {tuple(sorted(e.items(), key=str)) for e in map(_hashable, environments)}
    ]
    if len(distinct) <= 1:
        env = environments[0]
        return ["", "value"], [[key, _value_text(env.get(key))] for key in keys]
    return ["", *names], [
        [key, *(_value_text(env.get(key)) for env in environments)] for key in keys
    ]


def dataset_rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    return ["", "value"], [[k, _value_text(v)] for k, v in analysis.run.dataset.items()]


def _hashable(env: dict) -> dict:
    return {k: str(v) for k, v in env.items()}


def _value_text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "–"
    return str(value)


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


# --- HTML ---------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d232a; max-width: 1180px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 2px solid #dde3ea; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.subtitle { color: #5b6570; margin-top: 0; }
.verdict { background: #f3f7fb; border-left: 4px solid #3b7dd8; padding: 0.8em 1.2em; }
.problems { background: #fff6e5; border-left: 4px solid #e0a100; padding: 0.6em 1.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { padding: 0.3em 0.75em; border-bottom: 1px solid #e3e8ee; vertical-align: top; }
th { background: #f5f7f9; text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #e3e8ee; }
figcaption { color: #5b6570; font-size: 0.9em; }
.note { color: #5b6570; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 0 3em; }
details summary { cursor: pointer; color: #3b7dd8; }
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: #eef1f4; padding: 0.05em 0.3em; border-radius: 3px; }
"""


def _is_number(text: str) -> bool:
    stripped = text.replace("<b>", "").replace("</b>", "").split(" (")[0]
    stripped = stripped.replace(" pp", "").replace("< ", "").lstrip("+-−")
    try:
        float(stripped)
    except ValueError:
        return stripped.startswith("[") or stripped == "–"
    return True


def html_table(
    header: list[str], rows: list[list[str]], css_id: str = "", raw: bool = False
) -> str:
    """A table; numeric columns are right-aligned. Cells are escaped unless `raw`."""
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(header))]
    head = "".join(
        f"<th{' class=num' if numeric[i] else ''}>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if numeric[i] else ''}>{c if raw else html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    ident = f' id="{css_id}"' if css_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>\n"


def render_html(analysis: Analysis) -> str:
    run = analysis.run
    config = run.config
    esc = html.escape
    figures = charts(analysis)  # first: a skipped chart adds to run.problems
    title = f"actlab: activations on {config.dataset}"
    sources = ", ".join(str(p) for p in run.paths)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="subtitle">{esc(_subtitle(analysis))}<br>run: {esc(sources)}; created {esc(run.created)}</p>',
        '<h2 id="verdict">Verdict</h2>',
        '<div class="verdict">'
        + "".join(f"<p>{inline_code(esc(p))}</p>" for p in verdict(analysis))
        + "</div>",
    ]
    if run.problems:
        items = "".join(f"<li>{inline_code(esc(p))}</li>" for p in run.problems)
        parts.append(
            f'<div class="problems"><b>Problems found while reading the run:</b><ul>{items}</ul></div>'
        )
    section_figures = {}
    for section, caption, fig in figures:
        if analysis.unfinished and section != "activations":
            caption = f"{caption} ({analysis.unfinished})"
        section_figures.setdefault(section, []).append(_figure_html(caption, fig))

    if len(analysis.summary):
        parts.append('<h2 id="summary">Summary</h2>')
        parts.append(html_table(*summary_rows(analysis), css_id="summary-table"))
        parts.append(f'<p class="note">{esc(summary_note(analysis))}</p>')
    parts += ['<h2 id="charts">Training curves</h2>', *section_figures.get("curves", [])]
    if "activations" in section_figures:
        parts += ['<h2 id="activations">Activations</h2>', *section_figures["activations"]]
    if len(analysis.pairs):
        parts.append('<h2 id="differences">Paired differences</h2>')
        parts += section_figures.get("differences", [])
        parts.append(html_table(*pair_rows(analysis), css_id="pairs-table"))
        parts.append('<p class="note">Difference = first − second, in percentage points of final test '
                     "accuracy, paired by seed (members of one seed share initial weights and batch order). "
                     "A diverged member counts as a failure (0%) on its seed. p: exact sign-flip "
                     "permutation test (never below 2/2^n for n seeds); the interval is the one that "
                     "matches the pair's word: at the level of the Holm step that resolved it, else "
                     "at 1 − 0.05/m (simultaneous over all m pairs), so it excludes 0 exactly when "
                     "the pair is significant. Detectable gap: gaps below about it would be missed more "
                     "often than 20% of the time at the Holm level 0.05/m, if the SD of the paired "
                     "differences is the one observed; seeds for the min gap: a plan from the SD's "
                     "80% upper confidence limit (at least 5); TOST: the test that the gap is inside "
                     "±min gap (practically equivalent). See docs/statistics.md.</p>")  # fmt: skip
    if analysis.sensitivity is not None:
        parts.append('<h2 id="lr">Learning-rate selection</h2>')
        rule = (
            f"Rule: for each activation, the lr with the highest mean over seeds of the validation "
            f"accuracy averaged over {selection_window(analysis)} (a diverged member "
            "counts as 0); ties go to the smaller lr. Test numbers are never read for the choice."
            if analysis.selected is not None
            else "--select final: every (activation, lr) is compared as it is; no lr was selected."
        )
        parts.append(f'<p class="note">{inline_code(esc(rule))}</p>')
        parts.append(html_table(*_escaped(selection_rows(analysis)), css_id="lr-table", raw=True))
        parts += section_figures.get("lr", [])
    if "depth" in section_figures:
        parts += ['<h2 id="depth">Depth study</h2>', *section_figures["depth"]]
    if run.diagnostics is not None:
        parts.append('<h2 id="diagnostics">Diagnostics</h2>')
        if analysis.findings:
            parts.append(
                "<ul>"
                + "".join(f"<li>{inline_code(esc(s))}</li>" for s in analysis.findings)
                + "</ul>"
            )
        parts += section_figures.get("diagnostics", [])
        parts.append(f'<p class="note">{esc(diagnostics_definitions())}</p>')
    parts.append('<h2 id="members">Per-member results</h2>')
    header, rows = member_rows(analysis)
    parts.append(
        f"<details{' open' if len(rows) <= 24 else ''}><summary>{len(rows)} members</summary>"
        + html_table(header, rows, css_id="members-table")
        + "</details>"
    )
    diverged = analysis.results[analysis.results["diverged"]]
    if len(diverged):
        parts.append('<h3 id="diverged">Divergence</h3><ul>')
        parts += [f"<li>{esc(_member_text(r))}: loss became NaN/inf; frozen, and counted as a failure (0% accuracy) of its arm in the ranking and the paired tests.</li>"
                  for r in diverged.itertuples()]  # fmt: skip
        parts.append("</ul>")
    parts.append('<h2 id="timings">Timings</h2>')
    header, rows = timing_rows(analysis)
    parts.append(html_table(header, rows, css_id="timings-table"))
    total = sum(float(r[5]) for r in rows)
    parts.append(
        f'<p class="note">Total training time {total:.1f} s. All members of a stacked model train together; an epoch time covers all of them.</p>'
    )
    parts.append('<h2 id="setup">Setup</h2><div class="grid"><div><h3>Configuration</h3>')
    parts.append(html_table(*config_rows(analysis)))
    parts.append("</div><div><h3>Environment</h3>")
    parts.append(html_table(*environment_rows(analysis)))
    parts.append("<h3>Dataset</h3>")
    parts.append(html_table(*dataset_rows(analysis)))
    parts.append("</div></div>")
    parts.append(f'<p class="note">Written by actlab from {esc(sources)}; rebuild with '
                 f"<code>actlab report {esc(' '.join(str(p) for p in run.paths))}</code>.</p>")  # fmt: skip
    parts.append("</body></html>\n")
    return "\n".join(parts)


def inline_code(escaped: str) -> str:
    """`code` in already escaped text as <code>code</code>, as Markdown renders it."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _escaped(table: tuple[list[str], list[list[str]]]) -> tuple[list[str], list[list[str]]]:
    """Escape the cells of a table whose only markup is our own <b>."""
    header, rows = table
    clean = [
        [html.escape(c).replace("&lt;b&gt;", "<b>").replace("&lt;/b&gt;", "</b>") for c in r]
        for r in rows
    ]
    return header, clean


def _figure_html(caption: str, fig: Figure) -> str:
    data = figure_png(fig)
    alt = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _subtitle(analysis: Analysis) -> str:
    config = analysis.run.config
    model = f"{config.model.upper()} {'-'.join(map(str, config.hidden))}"
    if config.is_user_model:  # the user's own network: its reference and source hash
        digest = f" (source sha256 {config.model_sha256[:12]})" if config.model_sha256 else ""
        model = f"{config.model}{digest}"
    elif config.depths:
        model = f"{config.model.upper()} of depth {', '.join(map(str, config.depths))} (width {config.hidden[0]})"
    text = (
        f"{model}, {config.optimizer} lr {', '.join(lr_text(lr) for lr in config.lrs)}, "
        f"batch {config.batch_size}, {config.epochs} epochs, seeds {', '.join(map(str, config.seeds))}"
    )
    return f"{text}; {analysis.unfinished.upper()}" if analysis.unfinished else text


# --- Markdown -----------------------------------------------------------------------------


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]#|~"})


def md(text: object) -> str:
    """Text from names, specs and paths made inert in Markdown: HTML escaped (as in
    report.html) and Markdown punctuation backslash-escaped, on one line."""
    one_line = " ".join(str(text).splitlines())
    return html.escape(one_line, quote=False).translate(_MARKDOWN_SPECIAL)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; cells are escaped (`md`), our own <b> markup becomes bold."""

    def cell(text: str) -> str:
        return md(text).replace("&lt;b&gt;", "**").replace("&lt;/b&gt;", "**")

    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
    ]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(analysis: Analysis) -> str:
    run = analysis.run
    config = run.config
    env = run.environment
    parts = [
        MARKDOWN_MARK,
        f"# actlab: activations on {md(config.dataset)}\n",
        f"{md(_subtitle(analysis))}.\n",
        "\n\n".join(md(p) for p in verdict(analysis)) + "\n",
    ]
    if len(analysis.summary):
        parts += ["## Summary\n", markdown_table(*summary_rows(analysis)),
                  summary_note(analysis) + "\n"]  # fmt: skip
    if len(analysis.pairs):
        parts += [
            "## Paired differences (final test accuracy)\n",
            markdown_table(*pair_rows(analysis)),
        ]
    if analysis.sensitivity is not None:
        parts += [
            "## Learning-rate selection (validation accuracy)\n",
            markdown_table(*selection_rows(analysis)),
        ]
    if analysis.findings:
        parts += ["## Diagnostics\n", "\n".join(f"- {md(s)}" for s in analysis.findings) + "\n"]
    if run.problems:
        parts += [
            "## Problems found while reading\n",
            "\n".join(f"- {md(p)}" for p in run.problems) + "\n",
        ]
    environment = (
        f"actlab {env.get('actlab', '?')}, Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
        f"device {env.get('device', '?')} ({env.get('gpu') or env.get('cpu') or '?'}), "
        f"{env.get('threads', '?')} threads. Run: {', '.join(str(p) for p in run.paths)}."
    )
    parts.append(f"## Environment\n\n{md(environment)}\n")
    return "\n".join(parts)

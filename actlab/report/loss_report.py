"""The report of a study scored by a loss (lower is better): a language model, a
regression, or any study compared on its test loss (``--metric loss``).

The statistics are the classifier report's (actlab.report.stats: paired sign-flip tests
over seeds, Holm, TOST, power), on the task's metric instead of accuracy: the final-epoch
test loss, written in the task's unit (actlab.tasks.Task: ``scale``, ``short``): bits per
character for a byte-level language model (bpc = nats/token / ln 2), the MSE itself for a
regression. The tests run on the score ``-(loss * scale)`` so that, as in every pair of the
stats module, ``a`` is the better arm and the difference is how much better, in that unit.
The smallest gap that matters, ``--min-gap``, is read in hundredths of the metric's unit
(0.5: 0.005 bpc, 0.005 MSE), as it is in hundredths of accuracy (percentage points) for a
classifier.

Gated FFN activations (swiglu, geglu, ...) are compared with plain ones at equal
parameters (actlab.nn.gpt); the verdict names the best of each family and what the paired
test says about their gap.

The report is the classifier's page (actlab.report.page): one page model (`build`) of typed
tables (actlab.report.tables) rendered by Jinja2 templates (templates/loss_report.html.j2 and
loss_report.md.j2, which extend the frame every report shares), autoescaped in HTML; the
terminal prints the same summary table.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from actlab.report import loss_diagnostics, stats
from actlab.report.page import environment, environment_line
from actlab.report.render import MARKDOWN_MARK, figure_png, report_paths
from actlab.report.tables import Cell, Column, Table
from actlab.report.verdict import SMALL_TEST_SET
from actlab.study.store import RunData, write_text_atomic
from actlab.tasks import LN2

SCORE = "final_score"  # -(loss * scale): higher is better, as the stats module's pairs expect


def _gated(activation: str) -> bool:
    from actlab.catalog.gated import is_gated

    try:
        return is_gated(activation)
    except Exception:  # an activation registered by the user and not here now
        return False


def bpc(nats: float) -> float:
    return nats / LN2


def _lm(run: RunData) -> bool:
    return run.config.task.name == "lm"


def _unit(run: RunData) -> str:
    """The unit the report writes the metric in: "bpc", "MSE", ..."""
    return run.config.task.short or "loss"


def _metric_words(task) -> str:
    """ "in bits per character (nats/token / ln 2; lower is better)", "as mean squared
    error (MSE; lower is better)"."""
    name, _, note = task.long.partition(" (")
    if task.name == "lm":
        return f"in {name} ({note.rstrip(')')}; lower is better)"
    return f"as {name} ({task.short}; lower is better)"


def _long_name(run: RunData) -> str:
    """The metric's name for a title: "bits per character", "mean squared error"."""
    return run.config.task.long.split(" (")[0]


def _model_words(run: RunData) -> str:
    c = run.config
    if c.is_user_model:
        return f"your model {c.model}"
    if c.model == "mlp":
        return f"an MLP (hidden {', '.join(map(str, c.hidden))})"
    return f"a {c.model.upper()}"


def loss_analysis(run: RunData) -> dict:
    """Per-member results, arms, their summary, ranking and pairs, on -(loss * scale)."""
    results = stats.member_results(run.metrics)
    results[SCORE] = -results["final_test_loss"] * run.config.task.scale
    arms = stats.arm_results(results)
    summary = stats.summary_table(arms, metrics=(SCORE,))
    ranking = stats.ranking(arms, metric=SCORE)
    pairs = stats.pairwise(arms, metric=SCORE, margin=run.config.min_gap / 100)
    if len(summary):
        summary = summary.merge(
            ranking[["arm", "rank", "group", "tied_with_best"]], on="arm", how="left"
        ).sort_values("rank", na_position="last")
    return {"run": run, "results": results, "arms": arms, "summary": summary, "pairs": pairs}


def _bpc_text(score: float, digits: int = 4) -> str:
    return "–" if score is None or not math.isfinite(score) else f"{-score:.{digits}f}"


def _pair(pairs: pd.DataFrame, x: str, y: str) -> pd.Series | None:
    hit = pairs[((pairs["a"] == x) & (pairs["b"] == y)) | ((pairs["a"] == y) & (pairs["b"] == x))]
    return None if hit.empty else hit.iloc[0]


def _interval_text(pair: pd.Series) -> str:
    """The pair's interval at the level that matches its word (stats.pairwise), or why
    there is none."""
    confidence = f"{100 * pair['ci_confidence']:.3g}%"
    if not (math.isfinite(pair["ci_low"]) and math.isfinite(pair["ci_high"])):
        return f"{int(pair['n'])} seeds are too few for a {confidence} interval"
    return f"{confidence} CI [{pair['ci_low']:.4f}, {pair['ci_high']:.4f}]"


def _gap_sentence(
    pair: pd.Series, min_gap_bpc: float, unit: str = "bpc", label: str = "test loss"
) -> str:
    """What the paired test says of one pair: a below b by d (in `unit`), and how sure."""
    n = int(pair["n"])
    gap = f"{pair['a']}'s {label} is below {pair['b']}'s by {pair['mean_diff']:.4f} {unit}"
    if n < 2 or pd.isna(pair["p_holm"]):
        return f"{gap} on {n} seed(s): no test is possible with fewer than 2 seeds"
    gap += (
        f" ({_interval_text(pair)}; paired over {n} seeds, sign-flip test, Holm p = "
        f"{pair['p_holm']:.3g})"
    )
    if pair["significant"]:
        return gap + ": a real difference at the 5% level"
    if pair["equivalent"]:
        return gap + f": practically equivalent (TOST within ±{min_gap_bpc:g} {unit})"
    words = gap + ": not shown to differ, which is not evidence that they are equal"
    level = pair["level"]
    if math.isinf(pair["detectable_gap"]):
        words += (
            f"; with {n} seeds no gap can be found at the Holm level {level:.3g} (a sign-flip "
            f"test of {n} seeds cannot give p below {stats.smallest_p(n):.3g})"
        )
    elif math.isfinite(pair["detectable_gap"]):
        words += f"; gaps below about {pair['detectable_gap']:.4f} {unit} would be missed"
    if math.isfinite(pair["seeds_needed"]):
        words += f"; to detect {min_gap_bpc:g} {unit} plan about {int(pair['seeds_needed'])} seeds"
    return words


def verdict(analysis: dict) -> list[str]:
    run = analysis["run"]
    summary, pairs = analysis["summary"], analysis["pairs"]
    min_gap_bpc = run.config.min_gap / 100
    task, unit = run.config.task, _unit(run)
    seeds = int(analysis["results"]["seed"].nunique())
    where = "in the FFN of a GPT" if _lm(run) else f"in {_model_words(run)}"
    lines = [
        f"{len(summary)} activations {where} on {run.config.dataset}, {seeds} "
        f"seeds each, {run.config.epochs} epochs; the metric compared is the final-epoch test "
        f"loss {_metric_words(task)}, paired by seed."
    ]
    ranked = summary.dropna(subset=[f"{SCORE}_mean"])
    if ranked.empty:
        return [*lines, "No member finished: nothing to compare."]
    best = ranked.iloc[0]
    others = [_pair(pairs, best["arm"], arm) for arm in ranked["arm"].iloc[1:]]
    resolved = len(others) > 0 and all(p is not None and p["significant"] for p in others)
    interval = (
        f" (95% CI over seeds [{-best[f'{SCORE}_ci_high']:.4f}, {-best[f'{SCORE}_ci_low']:.4f}])"
        if math.isfinite(best[f"{SCORE}_ci_low"])
        else ""
    )
    lead = "The best is" if resolved else "Lowest mean (not shown to be the best):"
    lines.append(f"{lead} {best['arm']} at {_bpc_text(best[f'{SCORE}_mean'])} {unit}{interval}.")
    for _, row in ranked.iloc[1:].iterrows():
        pair = _pair(pairs, best["arm"], row["arm"])
        if pair is not None:
            lines.append(_gap_sentence(pair, min_gap_bpc, unit, task.metric_label) + ".")
    gated = [a for a in ranked["arm"] if _gated(a)]
    plain = [a for a in ranked["arm"] if not _gated(a)]
    if gated and plain:
        g, p = gated[0], plain[0]  # the best of each family (ranked order)
        pair = _pair(pairs, g, p)
        if pair is not None and best["arm"] in (g, p):
            lines.append(
                f"Gated against plain at equal parameters: the best gated FFN ({g}) against the "
                f"best plain one ({p}) is the {pair['a']}-{pair['b']} comparison above."
            )
        elif pair is not None:
            lines.append(
                f"Gated against plain at equal parameters: the best gated FFN ({g}) against "
                f"the best plain one ({p}): "
                + _gap_sentence(pair, min_gap_bpc, unit, task.metric_label)
                + "."
            )
    lines.append(_scope(run))
    if seeds < stats.SMALL_N:
        lines.append(
            f"Caution: only {seeds} seeds; every interval rests on {max(seeds - 1, 0)} "
            f"degree{'s' if seeds != 2 else ''} of freedom, so its width depends on the chance "
            "spread of the per-seed values shown. Stacked seeds are cheap: run with --seeds 10."
        )
    return lines


def _scope(run: RunData) -> str:
    """What the seeds can and cannot speak for (as the classifier's verdict says it): one
    split, one budget, seeds only; the test split's size in bytes or samples."""
    dataset = run.dataset or {}
    size, what = (
        (dataset.get("test_bytes"), "test bytes")
        if _lm(run)
        else (dataset.get("test_size"), "test samples")
    )
    split = "one fixed train/test split" + (f" ({int(size)} {what})" if size else "")
    epochs = f"{run.config.epochs} epoch{'s' if run.config.epochs != 1 else ''}"
    small = (
        f" Caution: a small test set: each member's test {_unit(run)} is itself an estimate "
        f"from {int(size)} samples, so a close ranking may not hold on another test set; more "
        "seeds do not shrink that."
        if not _lm(run) and size and size < SMALL_TEST_SET
        else ""
    )
    return (
        f"Scope: {split} and a budget of {epochs}; the seeds vary the initial weights and the "
        "batch order only, so every interval and test above is about that variation, not "
        f"about another test set, dataset or training budget.{small}"
    )


def _bpc_cell(score: float, digits: int = 4) -> Cell:
    """A -(loss * scale) score shown in the metric's unit (its value: that number, None
    when missing)."""
    missing = score is None or not math.isfinite(score)
    return Cell(_bpc_text(score, digits), None if missing else -score)


def _number_cell(value: float, text: str) -> Cell:
    return Cell(text, value if math.isfinite(value) else None)


def summary_table(analysis: dict) -> Table:
    """One row per activation, best (lowest final test metric: bpc, MSE, ...) first: the
    report's summary in report.html, report.md and the terminal. A language model also
    shows its loss in nats/token; for any other study the loss is the metric itself."""
    run = analysis["run"]
    lm, scale = _lm(run), run.config.task.scale
    spec = [("rank", "rank", True), ("activation", "activation", False), ("lr", "lr", True),
            ("seeds", "seeds", True), ("bpc", f"final test {_unit(run)}", True),
            ("std", "± SD", True), ("ci", "95% CI", True), ("per_seed", "per seed", False),
            ("loss", "final test loss (nats/token)", True), ("group", "group", False),
            ("diverged", "diverged", True)]  # fmt: skip
    if not lm:
        spec.remove(("loss", "final test loss (nats/token)", True))
    table = Table([Column(*column) for column in spec], css_id="summary-table")
    results = analysis["results"]
    for _, row in analysis["summary"].iterrows():
        members = results[(results["activation"] == row["activation"]) & ~results["diverged"]]
        per_seed = members.sort_values("seed")["final_test_loss"] * scale
        mean, std = row[f"{SCORE}_mean"], row[f"{SCORE}_std"]
        low, high = row[f"{SCORE}_ci_low"], row[f"{SCORE}_ci_high"]
        cells = [
            Cell("–", None) if pd.isna(row["rank"]) else Cell(str(int(row["rank"])), int(row["rank"])),
            Cell(str(row["arm"]), row["arm"]),
            Cell(f"{row['lr']:g}", row["lr"]),
            Cell(str(int(row["n"])), int(row["n"])),
            _bpc_cell(mean),
            _number_cell(std, "–" if not math.isfinite(std) else f"{std:.4f}"),
            Cell("–", None) if not math.isfinite(low) else Cell(f"[{-high:.4f}, {-low:.4f}]", (-high, -low)),
            Cell(", ".join(f"{v:.4f}" for v in per_seed), tuple(per_seed)),
            _number_cell(-mean * LN2, "–" if not math.isfinite(mean) else f"{-mean * LN2:.4f}"),
            Cell(str(row["group"] or "–"), row["group"] or None),
            Cell(str(int(row["n_diverged"])), int(row["n_diverged"])),
        ]  # fmt: skip
        if not lm:
            del cells[8]  # the nats/token column
        table.add(*cells)
    return table


def pairs_table(analysis: dict) -> Table:
    """One row per pair of activations: the paired test of their final test metric."""
    unit = _unit(analysis["run"])
    spec = [("lower", "lower", False), ("higher", "higher", False), ("seeds", "seeds", True),
            ("gap", f"gap ({unit})", True), ("interval", "interval", True), ("p", "p (Holm)", True),
            ("significant", "significant", False), ("detectable", "detectable gap", True),
            ("seeds_needed", "seeds to plan", True), ("tost_p", "TOST p (Holm)", True),
            ("equivalent", "equivalent", False)]  # fmt: skip
    table = Table([Column(*column) for column in spec], css_id="pairs-table")
    for _, p in analysis["pairs"].iterrows():
        finite = math.isfinite(p["ci_low"]) and math.isfinite(p["ci_high"])
        interval = f"[{p['ci_low']:.4f}, {p['ci_high']:.4f}] ({100 * p['ci_confidence']:.3g}%)"
        table.add(
            Cell(str(p["a"]), p["a"]), Cell(str(p["b"]), p["b"]),
            Cell(str(int(p["n"])), int(p["n"])),
            Cell(f"{p['mean_diff']:.4f}", p["mean_diff"]),
            Cell(interval, (p["ci_low"], p["ci_high"])) if finite else Cell("too few seeds", None),
            Cell("–", None) if pd.isna(p["p_holm"]) else Cell(f"{p['p_holm']:.3g}", p["p_holm"]),
            Cell("yes" if p["significant"] else "no", bool(p["significant"])),
            _number_cell(p["detectable_gap"], f"{p['detectable_gap']:.4f}"
                         if math.isfinite(p["detectable_gap"]) else "none"),
            _number_cell(p["seeds_needed"], f"{int(p['seeds_needed'])}"
                         if math.isfinite(p["seeds_needed"]) else "–"),
            Cell("–", None) if pd.isna(p["tost_p_holm"])
            else Cell(f"{p['tost_p_holm']:.3g}", p["tost_p_holm"]),
            Cell("yes" if p["equivalent"] else "no", bool(p["equivalent"])),
        )  # fmt: skip
    return table


def summary_rows(analysis: dict) -> tuple[list[str], list[list[str]]]:
    """The summary table's header and display texts (see `summary_table`)."""
    table = summary_table(analysis)
    return table.header, table.texts()


def pair_rows(analysis: dict) -> tuple[list[str], list[list[str]]]:
    """The pairs table's header and display texts (see `pairs_table`)."""
    table = pairs_table(analysis)
    return table.header, table.texts()


def curve_figure(run: RunData) -> Figure:
    """Mean test metric (bpc, MSE, ...) per epoch over seeds, one line per activation
    (gated dashed)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ok = run.metrics[run.metrics["status"] == "ok"]
    for activation, group in ok.groupby("activation", sort=False):
        means = group.groupby("epoch")["test_loss"].mean() * run.config.task.scale
        style = "--" if _gated(activation) else "-"
        ax.plot(means.index, means.values, style, marker="o", label=str(activation))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {_long_name(run)} (lower is better)")
    ax.legend()
    fig.tight_layout()
    return fig


def summary_note(run: RunData) -> str:
    return (
        "Mean over seeds of non-diverged members; std with ddof=1; 95% CI from the t "
        "distribution. Activations that share a group letter were not shown to differ at 5% "
        "(paired sign-flip tests over seeds, Holm-corrected over all pairs), which is not evidence that "
        "they are equal; practically equivalent means a TOST shows the gap inside "
        f"±{run.config.min_gap / 100:g} {_unit(run)} (--min-gap {run.config.min_gap:g}, in "
        f"hundredths of {'a bit per character' if _lm(run) else 'one ' + _unit(run)}). "
        "Detectable gap: the gap these seeds would find with 80% "
        "power at the Holm level, if the SD of the paired differences is the one observed "
        "(none: no sign-flip test of so few seeds can reach that level)."
    )


def _kind(run: RunData) -> str:
    return {"lm": "language model", "regress": "regression"}.get(run.config.task.name, "loss")


def _subtitle(run: RunData) -> str:
    c = run.config
    if not _lm(run):
        standardised = c.task.name == "regress" and c.task.loss == "mse"
        model = _model_words(run)
        return (
            f"{model[:1].upper()}{model[1:]}, trained on {c.task.long}; {c.optimizer} lr "
            f"{', '.join(f'{lr:g}' for lr in c.lrs)}, batch {c.batch_size}, "
            f"{_plural(c.epochs, 'epoch')}, "
            f"seeds {', '.join(map(str, c.seeds))}"
            + (
                "; targets standardised with the train split's mean and std (predicting that "
                "mean scores about 1.0 MSE)"
                if standardised
                else ""
            )
        )
    clip = f", clip {c.clip:g}" if c.clip is not None else ""
    warm = f", warm-up {c.warmup}" if c.warmup else ""
    return (
        f"GPT width {c.width}, {_plural(c.layers, 'layer')}, {_plural(c.heads, 'head')}, "
        f"context {c.context}; {c.optimizer} lr {', '.join(f'{lr:g}' for lr in c.lrs)}, "
        f"{c.schedule} schedule{warm}{clip}, batch {c.batch_size}, {_plural(c.epochs, 'epoch')}, seeds "
        f"{', '.join(map(str, c.seeds))}; gated FFNs have 2/3 of the hidden units (equal parameters)"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def build(analysis: dict, figures: bool = True) -> dict:
    """Everything report.html and report.md show, computed once (the page model of
    templates/loss_report.*.j2; `figures`: draw the chart, which only the HTML shows)."""
    run = analysis["run"]
    chart = {"caption": f"test {_unit(run)} per epoch", "png": figure_png(curve_figure(run))}
    return {
        "mark": MARKDOWN_MARK,
        "title": f"actlab: activations on {run.config.dataset} ({_kind(run)})",
        "chart_title": f"Test {_long_name(run)}",
        "unit": _unit(run),
        "subtitle": _subtitle(run),
        "sources": ", ".join(str(p) for p in run.paths),
        "paths": " ".join(str(p) for p in run.paths),
        "created": run.created,
        "verdict": verdict(analysis),
        "problems": run.problems,
        "summary": summary_table(analysis),
        "summary_note": summary_note(run),
        "figures": [chart] if figures else [],
        "pairs": pairs_table(analysis) if len(analysis["pairs"]) else None,
        "diagnostics": loss_diagnostics.section(run, figures),
        "environment_line": environment_line(run),
    }


def to_html(page: dict) -> str:
    return environment().get_template("loss_report.html.j2").render(r=page)


def to_markdown(page: dict) -> str:
    return environment().get_template("loss_report.md.j2").render(r=page)


def render_markdown(analysis: dict) -> str:
    return to_markdown(build(analysis, figures=False))


def render_html(analysis: dict) -> str:
    return to_html(build(analysis))


def write_loss_report(run: RunData, output=None):
    """report.html and report.md of a study scored by a loss; returns the HTML path."""
    html_path, md_path = report_paths(output, run.path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    page = build(loss_analysis(run))  # one page model for both files
    write_text_atomic(html_path, to_html(page))
    write_text_atomic(md_path, to_markdown(page))
    return html_path

"""The report of a study scored by a loss (a language model: lower is better).

The statistics are the classifier report's (actlab.report.stats: paired sign-flip tests
over seeds, Holm, TOST, power), on the task's metric instead of accuracy: the final-epoch test loss,
written in bits per character for a byte-level language model (bpc = nats/token / ln 2).
The tests run on the score ``-bpc`` so that, as in every pair of the stats module, ``a`` is
the better arm and the difference is how much better, in bpc. The smallest gap that
matters, ``--min-gap``, is read in hundredths of the metric's unit (0.5: 0.005 bpc), as it
is in hundredths of accuracy (percentage points) for a classifier.

Gated FFN activations (swiglu, geglu, ...) are compared with plain ones at equal
parameters (actlab.nn.gpt); the verdict names the best of each family and what the paired
test says about their gap.
"""

from __future__ import annotations

import html
import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from actlab.report import loss_diagnostics, stats
from actlab.report.page import css, md, table_html, table_markdown
from actlab.report.render import MARKDOWN_MARK, figure_png, report_paths
from actlab.report.tables import Column, Table
from actlab.study.store import RunData, write_text_atomic
from actlab.tasks import LN2

# Columns of words, not numbers (left-aligned); every other column is right-aligned.
TEXT_COLUMNS = {"activation", "per seed", "group", "lower", "higher", "significant", "equivalent"}


def _table(header: list[str], rows: list[list[str]], css_id: str = "") -> Table:
    table = Table([Column(h, h, h not in TEXT_COLUMNS) for h in header], css_id=css_id)
    for row in rows:
        table.add(*row)
    return table


def html_table(header: list[str], rows: list[list[str]], css_id: str = "") -> str:
    return table_html(_table(header, rows, css_id))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return table_markdown(_table(header, rows))


SCORE = "final_score"  # -bpc: higher is better, as the stats module's pairs expect


def _gated(activation: str) -> bool:
    from actlab.catalog.gated import is_gated

    try:
        return is_gated(activation)
    except Exception:  # an activation registered by the user and not here now
        return False


def bpc(nats: float) -> float:
    return nats / LN2


def loss_analysis(run: RunData) -> dict:
    """Per-member results, arms, their summary, ranking and pairs, on -bpc."""
    results = stats.member_results(run.metrics)
    results[SCORE] = -results["final_test_loss"] / LN2
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


def _gap_sentence(pair: pd.Series, min_gap_bpc: float) -> str:
    """What the paired test says of one pair: a below b by d bpc, and how sure that is."""
    n = int(pair["n"])
    gap = f"{pair['a']}'s test loss is below {pair['b']}'s by {pair['mean_diff']:.4f} bpc"
    if n < 2 or pd.isna(pair["p_holm"]):
        return f"{gap} on {n} seed(s): no test is possible with fewer than 2 seeds"
    gap += (
        f" ({_interval_text(pair)}; paired over {n} seeds, sign-flip test, Holm p = "
        f"{pair['p_holm']:.3g})"
    )
    if pair["significant"]:
        return gap + ": a real difference at the 5% level"
    if pair["equivalent"]:
        return gap + f": practically equivalent (TOST within ±{min_gap_bpc:g} bpc)"
    words = gap + ": not shown to differ, which is not evidence that they are equal"
    level = pair["level"]
    if math.isinf(pair["detectable_gap"]):
        words += (
            f"; with {n} seeds no gap can be found at the Holm level {level:.3g} (a sign-flip "
            f"test of {n} seeds cannot give p below {stats.smallest_p(n):.3g})"
        )
    elif math.isfinite(pair["detectable_gap"]):
        words += f"; gaps below about {pair['detectable_gap']:.4f} bpc would be missed"
    if math.isfinite(pair["seeds_needed"]):
        words += f"; to detect {min_gap_bpc:g} bpc plan about {int(pair['seeds_needed'])} seeds"
    return words


def verdict(analysis: dict) -> list[str]:
    run = analysis["run"]
    summary, pairs = analysis["summary"], analysis["pairs"]
    min_gap_bpc = run.config.min_gap / 100
    seeds = int(analysis["results"]["seed"].nunique())
    lines = [
        f"{len(summary)} activations in the FFN of a GPT on {run.config.dataset}, {seeds} "
        f"seeds each, {run.config.epochs} epochs; the metric compared is the final-epoch test "
        "loss in bits per character (nats/token / ln 2; lower is better), paired by seed."
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
    lines.append(f"{lead} {best['arm']} at {_bpc_text(best[f'{SCORE}_mean'])} bpc{interval}.")
    for _, row in ranked.iloc[1:].iterrows():
        pair = _pair(pairs, best["arm"], row["arm"])
        if pair is not None:
            lines.append(_gap_sentence(pair, min_gap_bpc) + ".")
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
                f"the best plain one ({p}): " + _gap_sentence(pair, min_gap_bpc) + "."
            )
    if seeds < stats.SMALL_N:
        lines.append(
            f"Caution: only {seeds} seeds; every interval rests on {max(seeds - 1, 0)} "
            f"degree{'s' if seeds != 2 else ''} of freedom, so its width depends on the chance "
            "spread of the per-seed values shown. Stacked seeds are cheap: run with --seeds 10."
        )
    return lines


def summary_rows(analysis: dict) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "activation", "lr", "seeds", "final test bpc", "± std", "95% CI",
              "per seed", "final test loss (nats/token)", "group", "diverged"]  # fmt: skip
    results = analysis["results"]
    rows = []
    for _, row in analysis["summary"].iterrows():
        members = results[(results["activation"] == row["activation"]) & ~results["diverged"]]
        mean = row[f"{SCORE}_mean"]
        low, high = row[f"{SCORE}_ci_low"], row[f"{SCORE}_ci_high"]
        rows.append([
            "–" if pd.isna(row["rank"]) else str(int(row["rank"])), str(row["arm"]),
            f"{row['lr']:g}", str(int(row["n"])), _bpc_text(mean),
            "–" if not math.isfinite(row[f"{SCORE}_std"]) else f"{row[f'{SCORE}_std']:.4f}",
            "–" if not math.isfinite(low) else f"[{-high:.4f}, {-low:.4f}]",
            ", ".join(f"{v:.4f}" for v in bpc(members.sort_values("seed")["final_test_loss"])),
            "–" if not math.isfinite(mean) else f"{-mean * LN2:.4f}",
            str(row["group"] or "–"), str(int(row["n_diverged"])),
        ])  # fmt: skip
    return header, rows


def pair_rows(analysis: dict) -> tuple[list[str], list[list[str]]]:
    header = ["lower", "higher", "seeds", "gap (bpc)", "interval", "p (Holm)", "significant",
              "detectable gap", "seeds to plan", "TOST p (Holm)", "equivalent"]  # fmt: skip
    rows = []
    for _, p in analysis["pairs"].iterrows():
        finite = math.isfinite(p["ci_low"]) and math.isfinite(p["ci_high"])
        rows.append([
            str(p["a"]), str(p["b"]), str(int(p["n"])), f"{p['mean_diff']:.4f}",
            f"[{p['ci_low']:.4f}, {p['ci_high']:.4f}] ({100 * p['ci_confidence']:.3g}%)"
            if finite else "too few seeds",
            "–" if pd.isna(p["p_holm"]) else f"{p['p_holm']:.3g}",
            "yes" if p["significant"] else "no",
            f"{p['detectable_gap']:.4f}" if math.isfinite(p["detectable_gap"]) else "none",
            f"{int(p['seeds_needed'])}" if math.isfinite(p["seeds_needed"]) else "–",
            "–" if pd.isna(p["tost_p_holm"]) else f"{p['tost_p_holm']:.3g}",
            "yes" if p["equivalent"] else "no",
        ])  # fmt: skip
    return header, rows


def curve_figure(run: RunData) -> Figure:
    """Mean test bpc per epoch over seeds, one line per activation (gated dashed)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ok = run.metrics[run.metrics["status"] == "ok"]
    for activation, group in ok.groupby("activation", sort=False):
        means = group.groupby("epoch")["test_loss"].mean() / LN2
        style = "--" if _gated(activation) else "-"
        ax.plot(means.index, means.values, style, marker="o", label=str(activation))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test bits per character (lower is better)")
    ax.legend()
    fig.tight_layout()
    return fig


def summary_note(run: RunData) -> str:
    return (
        "Mean over seeds of non-diverged members; std with ddof=1; 95% CI from the t "
        "distribution. Activations that share a group letter were not shown to differ at 5% "
        "(paired sign-flip tests over seeds, Holm-corrected over all pairs), which is not evidence that "
        "they are equal; practically equivalent means a TOST shows the gap inside "
        f"±{run.config.min_gap / 100:g} bpc (--min-gap {run.config.min_gap:g}, in hundredths "
        "of a bit per character). Detectable gap: the gap these seeds would find with 80% "
        "power at the Holm level, if the SD of the paired differences is the one observed "
        "(none: no sign-flip test of so few seeds can reach that level)."
    )


def _subtitle(run: RunData) -> str:
    c = run.config
    clip = f", clip {c.clip:g}" if c.clip is not None else ""
    warm = f", warm-up {c.warmup}" if c.warmup else ""
    return (
        f"GPT width {c.width}, {c.layers} layers, {c.heads} heads, context {c.context}; "
        f"{c.optimizer} lr {', '.join(f'{lr:g}' for lr in c.lrs)}, {c.schedule} schedule"
        f"{warm}{clip}, batch {c.batch_size}, {c.epochs} epochs, seeds "
        f"{', '.join(map(str, c.seeds))}; gated FFNs have 2/3 of the hidden units (equal parameters)"
    )


def render_markdown(analysis: dict) -> str:
    run = analysis["run"]
    parts = [
        MARKDOWN_MARK,
        f"# actlab: activations on {md(run.config.dataset)} (language model)\n",
        f"{md(_subtitle(run))}.\n",
        "\n\n".join(md(p) for p in verdict(analysis)) + "\n",
        "## Summary\n",
        markdown_table(*summary_rows(analysis)),
        summary_note(run) + "\n",
    ]
    if len(analysis["pairs"]):
        parts += ["## Paired differences (final test bpc)\n", markdown_table(*pair_rows(analysis))]
    diagnostics = loss_diagnostics.markdown_section(run)
    if diagnostics:
        parts.append(diagnostics)
    return "\n".join(parts)


def render_html(analysis: dict) -> str:
    run = analysis["run"]
    esc = html.escape
    title = f"actlab: activations on {run.config.dataset} (language model)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>\n{css()}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="subtitle">{esc(_subtitle(run))}</p>',
        '<h2 id="verdict">Verdict</h2>',
        '<div class="verdict">' + "".join(f"<p>{esc(p)}</p>" for p in verdict(analysis)) + "</div>",
        '<h2 id="summary">Summary</h2>',
        html_table(*summary_rows(analysis), css_id="summary-table"),
        f'<p class="note">{esc(summary_note(run))}</p>',
        '<h2 id="charts">Test bits per character</h2>',
        f'<figure><img alt="test bpc per epoch" src="data:image/png;base64,'
        f'{figure_png(curve_figure(run))}"></figure>',
    ]
    if len(analysis["pairs"]):
        parts += [
            '<h2 id="differences">Paired differences</h2>',
            html_table(*pair_rows(analysis), css_id="pairs-table"),
        ]
    parts.append(loss_diagnostics.html_section(run))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_loss_report(run: RunData, output=None):
    """report.html and report.md of a study scored by a loss; returns the HTML path."""
    html_path, md_path = report_paths(output, run.path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    analysis = loss_analysis(run)
    write_text_atomic(html_path, render_html(analysis))
    write_text_atomic(md_path, render_markdown(analysis))
    return html_path

"""The report as pages: one page model (`build`) rendered by Jinja2 templates into report.html
and report.md (actlab/report/templates/), and the tables as plain text for a terminal.

The HTML template autoescapes every text; the Markdown one passes every text from names,
specs and paths through the `md` filter. Neither parses numbers out of text: tables are
typed (actlab.report.tables).
"""

from __future__ import annotations

import html
import re
from functools import cache

import jinja2
from markupsafe import Markup, escape

from actlab.report import render, tables, verdict
from actlab.report.render import Analysis

SECTIONS = ("curves", "activations", "differences", "lr", "depth", "diagnostics")


# --- filters ----------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]#|~"})


def md(text: object) -> str:
    """Text from names, specs and paths made inert in Markdown: HTML escaped (as in
    report.html) and Markdown punctuation backslash-escaped, on one line."""
    one_line = " ".join(str(text).splitlines())
    return html.escape(one_line, quote=False).translate(_MARKDOWN_SPECIAL)


def inline_code(text: object) -> Markup:
    """Text escaped for HTML, with its `code` spans as <code>code</code> (as Markdown shows
    them)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


@cache
def environment() -> jinja2.Environment:
    """The templates' environment: autoescape for .html templates, none for .md ones."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("actlab.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(md=md, inline_code=inline_code)
    return env


# --- the page model ---------------------------------------------------------------------------


def build(analysis: Analysis, figures: bool = True) -> dict:
    """Everything report.html and report.md show, computed once. `figures`: draw the charts
    (the HTML shows them; a chart that cannot be drawn is noted in the run's problems)."""
    run = analysis.run
    config = run.config
    drawn: dict[str, list[dict]] = {section: [] for section in SECTIONS}
    if figures:  # first: a skipped chart adds to run.problems
        for section, caption, fig in render.charts(analysis):
            if analysis.unfinished and section != "activations":
                caption = f"{caption} ({analysis.unfinished})"
            drawn[section].append({"caption": caption, "png": render.figure_png(fig)})
    diverged = analysis.results[analysis.results["diverged"]]
    timings = tables.timings(analysis)
    total = timings.columns.index(next(c for c in timings.columns if c.key == "total_s"))
    return {
        "mark": render.MARKDOWN_MARK,
        "title": f"actlab: activations on {config.dataset}",
        "subtitle": render._subtitle(analysis),
        "sources": ", ".join(str(p) for p in run.paths),
        "paths": " ".join(str(p) for p in run.paths),
        "created": run.created,
        "verdict": verdict.verdict(analysis),
        "problems": run.problems,
        "figures": drawn,
        "summary": tables.summary(analysis) if len(analysis.summary) else None,
        "summary_note": tables.summary_note(analysis) if len(analysis.summary) else "",
        "pairs": tables.pairs(analysis) if len(analysis.pairs) else None,
        "selection": None if analysis.sensitivity is None else tables.selection(analysis),
        "selection_rule": selection_rule(analysis),
        "has_diagnostics": run.diagnostics is not None,
        "findings": analysis.findings,
        "diagnostics_definitions": (
            render.diagnostics_definitions() if run.diagnostics is not None else ""
        ),
        "members": tables.members(analysis),
        "diverged": [verdict._member_text(row) for row in diverged.itertuples()],
        "timings": timings,
        "total_time_s": sum(row[total].value for row in timings.rows),
        "config": tables.config_table(analysis),
        "environment": tables.environment_table(analysis),
        "dataset": tables.dataset_table(analysis),
        "environment_line": environment_line(run),
    }


def selection_rule(analysis: Analysis) -> str:
    if analysis.selected is None:
        return "--select final: every (activation, lr) is compared as it is; no lr was selected."
    return (
        "Rule: for each activation, the lr with the highest mean over seeds of the validation "
        f"accuracy averaged over {verdict.selection_window(analysis)} (a diverged member "
        "counts as 0); ties go to the smaller lr. Test numbers are never read for the choice."
    )


def environment_line(run) -> str:
    env = run.environment
    return (
        f"actlab {env.get('actlab', '?')}, Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
        f"device {env.get('device', '?')} ({env.get('gpu') or env.get('cpu') or '?'}), "
        f"{env.get('threads', '?')} threads. Run: {', '.join(str(p) for p in run.paths)}."
    )


# --- renderers --------------------------------------------------------------------------------


def css() -> str:
    """The report's stylesheet (templates/report.css)."""
    return environment().loader.get_source(environment(), "report.css")[0]


def table_html(table: tables.Table) -> str:
    """One table as report.html writes it (templates/table.html.j2)."""
    return str(environment().get_template("table.html.j2").module.table(table))


def table_markdown(table: tables.Table) -> str:
    """One table as report.md writes it (templates/table.md.j2)."""
    return str(environment().get_template("table.md.j2").module.table(table))


def to_html(page: dict) -> str:
    return environment().get_template("report.html.j2").render(r=page)


def to_markdown(page: dict) -> str:
    return environment().get_template("report.md.j2").render(r=page)


def to_terminal(table: tables.Table) -> str:
    """The table as aligned plain text: a header, a rule of dashes, numbers right-aligned."""
    rows = [table.header, *table.texts()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.columns))]
    numeric = table.numeric()

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [line(table.header), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [line(row) for row in table.texts()])

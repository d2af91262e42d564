"""The diagnostics of a loss-scored study in its report (actlab.report.loss_report): for a
language model what actlab.engine.lm_diagnostics measured, by the GPT's layer names; for
any other network (a regression MLP, a user model) what actlab.engine.diagnostics
measured, by layer number, with the classifier report's definitions.

- sentences: per activation, the block whose FFN has the most dead units, and the most
  saturated, at the last epoch, when at or above the classifier report's thresholds
  (actlab.engine.diagnostics.DEAD_FINDING, SATURATED_FINDING), next to the activation
  with the fewest on that block;
- a table of the FFN units of each block at the last epoch (dead and saturated, % of the
  block's hidden units, mean over seeds);
- a table of the weight-gradient norm of every layer at the first and the last epoch
  (mean over the epoch's steps, before clipping; mean over seeds);
- a chart of the FFN units over epochs (actlab.report.plots.plot_unit_health);
- the definitions.

Every number is a mean over the seeds of the members that did not diverge; the number of
seeds behind each column is given in its header.
"""

from __future__ import annotations

import pandas as pd

from actlab.engine import diagnostics as diagnostics_lib
from actlab.engine import lm_diagnostics
from actlab.report import plots
from actlab.report.render import figure_png
from actlab.report.tables import Column, Table
from actlab.study.store import RunData

TITLE = "Diagnostics"


def definitions() -> str:
    return (
        f"{diagnostics_lib.DEFINITIONS} Here the probe batch is {lm_diagnostics.PROBE_WINDOWS} "
        "windows of the train split at fixed positions, the same for every member; a unit is "
        "one hidden feature of a block's FFN, and its values are every probe window's every "
        "position. A gated FFN unit a * gate(b) (swiglu, geglu, ...) is measured on b with its "
        "gate (silu, gelu, ...): it passes nothing, and no gradient to W_a, where the gate is "
        "0. Gradient norms are taken before clipping."
    )


def _arms(frame: pd.DataFrame) -> pd.Series:
    """The column label of each row: the activation, with its lr when the study has several."""
    if frame["lr"].nunique() > 1:
        return frame["activation"].astype(str) + " (lr=" + frame["lr"].map("{:g}".format) + ")"
    return frame["activation"].astype(str)


def _percent(value: float) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.1f}%"


def _norm(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3g}"


def _prepared(run: RunData) -> pd.DataFrame | None:
    frame = run.diagnostics
    if frame is None or not len(frame):
        return None
    return frame.assign(arm=_arms(frame))


def unit_table(frame: pd.DataFrame, labels: dict[int, str], heading: str = "FFN of") -> Table:
    """Units of each block's FFN (or hidden layer) at the last epoch: dead / saturated, mean
    over seeds."""
    last = frame[frame["epoch"] == frame["epoch"].max()].dropna(subset=["dead_frac"])
    arms = list(dict.fromkeys(last["arm"]))
    means = last.groupby(["layer", "arm"])[["dead_frac", "saturated_frac"]].mean()
    seeds = last.groupby("arm")["seed"].nunique()
    columns = [Column("block", heading)]
    columns += [Column(a, f"{a} ({seeds[a]} seeds): dead / saturated", True) for a in arms]
    table = Table(columns, css_id="lm-units-table")
    for layer in sorted(last["layer"].unique()):
        cells = []
        for arm in arms:
            if (layer, arm) in means.index:
                row = means.loc[(layer, arm)]
                cells.append(f"{_percent(row['dead_frac'])} / {_percent(row['saturated_frac'])}")
            else:
                cells.append("–")
        table.add(labels[int(layer)].removesuffix(" FFN in"), *cells)
    return table


def gradient_table(frame: pd.DataFrame, labels: dict[int, str]) -> Table:
    """Weight-gradient norm of every layer, first -> last epoch, mean over seeds."""
    first_epoch, last_epoch = frame["epoch"].min(), frame["epoch"].max()
    arms = list(dict.fromkeys(frame["arm"]))
    means = frame.groupby(["layer", "arm", "epoch"])["grad_norm"].mean()
    title = (
        f"epoch {first_epoch} → {last_epoch}"
        if first_epoch != last_epoch
        else f"epoch {last_epoch}"
    )
    columns = [Column("layer", "layer")] + [Column(a, f"{a}: {title}", True) for a in arms]
    table = Table(columns, css_id="lm-gradients-table")
    for layer in sorted(frame["layer"].unique()):
        cells = []
        for arm in arms:
            values = [means.get((layer, arm, e)) for e in dict.fromkeys((first_epoch, last_epoch))]
            cells.append(" → ".join(_norm(v) for v in values))
        table.add(labels.get(int(layer), f"layer {layer}"), *cells)
    return table


def sentences(frame: pd.DataFrame, labels: dict[int, str]) -> list[str]:
    """Dead and saturated FFN units worth saying, at the last epoch (module docstring)."""
    last = frame[frame["epoch"] == frame["epoch"].max()].dropna(subset=["dead_frac"])
    means = last.groupby(["arm", "layer"])[["dead_frac", "saturated_frac"]].mean().reset_index()
    out = []
    for column, floor, words in (
        ("dead_frac", diagnostics_lib.DEAD_FINDING, "dead"),
        ("saturated_frac", diagnostics_lib.SATURATED_FINDING, "saturated"),
    ):
        for arm, rows in means.groupby("arm", sort=False):
            worst = rows.loc[rows[column].idxmax()]
            if not worst[column] >= floor:
                continue
            where = labels[int(worst["layer"])].removesuffix(" in")
            text = f"{arm}: {_percent(worst[column])} of the {where} units are {words}"
            others = means[(means["layer"] == worst["layer"]) & (means["arm"] != arm)]
            if len(others):
                best = others.loc[others[column].idxmin()]
                text += f"; {best['arm']}: {_percent(best[column])}"
            out.append(text + f" (epoch {int(last['epoch'].max())}, mean over seeds).")
    return out


def _unit_figure(frame: pd.DataFrame, labels: dict[int, str]):
    sites = frame.dropna(subset=["dead_frac"])
    named = {layer: labels[layer].removesuffix(" in") for layer in sites["layer"].unique()}
    return plots.plot_unit_health(frame.assign(activation=frame["arm"]), layer_labels=named)


def section(run: RunData, figures: bool = True) -> dict | None:
    """The Diagnostics section of the page model (templates/loss_report.*.j2), None when
    the study has no diagnostics; `figures`: draw the chart (report.html only)."""
    frame = _prepared(run)
    if frame is None:
        return None
    gpt = run.config.model == "gpt"
    if gpt:
        labels = lm_diagnostics.layer_labels(run.config.layers)
        caption = "Dead and saturated FFN units per block and epoch, mean over seeds"
    else:  # hidden layer l and weight layer l, as in the classifier report
        labels = {int(layer): f"layer {layer}" for layer in frame["layer"].unique()}
        caption = "Dead and saturated units per hidden layer and epoch, mean over seeds"
    figure = None
    if figures:
        figure = {"caption": caption, "png": figure_png(_unit_figure(frame, labels))}
    return {
        "title": TITLE,
        "sentences": sentences(frame, labels),
        "units_title": "FFN units at the last epoch" if gpt else "Units at the last epoch",
        "units": unit_table(frame, labels, "FFN of" if gpt else "hidden layer"),
        "figure": figure,
        "gradients": gradient_table(frame, labels),
        "definitions": definitions() if gpt else diagnostics_lib.DEFINITIONS,
    }

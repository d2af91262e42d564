"""Matplotlib figures. Every function returns a Figure and never opens a window;
`save_figure` writes PNG or SVG by the file's suffix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

matplotlib.use("Agg")  # never open a window, also when a display is present

# === activation curves (catalog) ==========================================================

_DERIVATIVE_NAMES = {0: "f(x)", 1: "f'(x)", 2: "f''(x)"}
_DERIVATIVE_TITLES = {0: "Activation", 1: "First derivative", 2: "Second derivative"}
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def activation_curves(
    spec: object, x: np.ndarray, derivatives: Sequence[int] = (0, 1)
) -> dict[int, np.ndarray]:
    """f and its derivatives (by autograd, float64) on the points ``x``, by order.
    Entries that mix units are drawn on ``catalog.scalar_view`` (softmax: unit 0 of [x, 0])."""
    import torch

    from actlab.catalog import scalar_view

    fn = scalar_view(spec)
    points = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    curves = {0: fn(points)}
    for order in (1, 2):
        previous = curves[order - 1]
        if order > max(derivatives) or not previous.requires_grad:
            curves[order] = torch.zeros_like(points)  # piecewise linear: f'' is 0 a.e.
            continue
        (curves[order],) = torch.autograd.grad(previous.sum(), points, create_graph=order < 2)
    return {order: curves[order].detach().numpy() for order in derivatives}


def plot_activations(
    specs: Sequence[object],
    x_range: tuple[float, float] = (-5.0, 5.0),
    derivatives: Sequence[int] = (0, 1),
) -> Figure:
    """One panel per derivative order (0: f, 1: f', 2: f''), one line per activation, all
    derivatives by autograd. Labels are the catalog's canonical labels."""
    from actlab.catalog import canonical_label
    from actlab.errors import ConfigError

    orders = sorted(set(derivatives))
    if not orders or any(order not in _DERIVATIVE_NAMES for order in orders):
        raise ConfigError(f"derivatives {list(derivatives)} must be among 0, 1, 2, e.g. 0,1")
    low, high = (float(v) for v in x_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"range {low} {high} must be two finite numbers LO < HI, e.g. -5 5")
    if not specs:
        raise ConfigError("no activation to plot; name at least one, e.g. relu")
    x = np.linspace(low, high, 1201)
    fig = Figure(figsize=(4.8 * len(orders), 4.0), layout="constrained")
    axes = fig.subplots(1, len(orders), squeeze=False)[0]
    palette = matplotlib.colormaps["tab10"].colors
    for index, spec in enumerate(specs):
        label = canonical_label(spec)
        curves = activation_curves(spec, x, orders)
        # A line style per curve, so that overlapping curves (relu, leaky_relu) stay visible.
        style = ("-", "--", "-.", ":")[index % 4]
        for ax, order in zip(axes, orders, strict=True):
            ax.plot(x, curves[order], style, color=palette[index % len(palette)], label=label,
                    linewidth=2.0)  # fmt: skip
    for ax, order in zip(axes, orders, strict=True):
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_title(_DERIVATIVE_TITLES[order])
        ax.set_xlabel("x")
        ax.set_ylabel(_DERIVATIVE_NAMES[order])
        ax.set_xlim(low, high)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Activation functions" + (" and derivatives (autograd)" if orders != [0] else ""))
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG or PDF by the file's suffix (creating the folder)."""
    from actlab.errors import ConfigError

    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ConfigError(
            f"cannot write a figure to {str(path)!r}; use a name ending in {', '.join(FIGURE_SUFFIXES)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    plain_text(fig).savefig(path, dpi=150)
    return path


def plain_text(fig: Figure) -> Figure:
    """Render every label, title and legend entry as plain text, never as mathtext: names
    and specs are the user's text, and a '$' or '^' in them must be drawn, not parsed."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    return fig


# === training curves, statistics, diagnostics (report) ====================================


# Accuracies are stored as fractions; charts show percentages.
_PERCENT_COLUMNS = ("train_acc", "val_acc", "test_acc")
_CURVE_TITLES = {
    "train_loss": "Training loss",
    "test_loss": "Test loss",
    "test_acc": "Test accuracy (%)",
    "val_acc": "Validation accuracy (%)",
}


def arm_colors(arms: Sequence[str]) -> dict[str, object]:
    """One fixed colour per arm, so that every chart of a report agrees."""
    palette = matplotlib.colormaps["tab10"].colors
    return {arm: palette[i % len(palette)] for i, arm in enumerate(arms)}


def _band(ax, x, mean, low, high, color, label: str) -> None:
    ax.plot(x, mean, color=color, label=label, linewidth=1.8, marker="o", markersize=3)
    if np.isfinite(np.asarray(low, dtype=float)).any():
        ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)


def plot_training_curves(
    curves: Mapping[str, pd.DataFrame], colors: Mapping[str, object] | None = None
) -> Figure:
    """One panel per metric (e.g. train_loss, test_loss, test_acc) vs epoch; one line per
    arm with its mean +- 95% CI band over seeds. `curves[column]` is `stats.curves(...)`
    for one depth (columns arm, epoch, n, mean, ci_low, ci_high)."""
    columns = list(curves)
    fig = Figure(figsize=(4.6 * len(columns), 3.8), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    arms = list(dict.fromkeys(a for frame in curves.values() for a in frame["arm"]))
    colors = dict(colors or arm_colors(arms))
    for ax, column in zip(axes, columns, strict=True):
        scale = 100.0 if column in _PERCENT_COLUMNS else 1.0
        for arm, group in curves[column].groupby("arm", sort=False):
            group = group.sort_values("epoch")
            _band(ax, group["epoch"], group["mean"] * scale, group["ci_low"] * scale,
                  group["ci_high"] * scale, colors[arm], str(arm))  # fmt: skip
        ax.set_title(_CURVE_TITLES.get(column, column))
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="best")
    return fig


def plot_differences(pairs: pd.DataFrame, metric_label: str = "final test accuracy") -> Figure:
    """Pairwise gaps a - b in percentage points with their 95% CI (paired over seeds);
    filled markers are significant after Holm's correction, hollow ones are not."""
    pairs = pairs.reset_index(drop=True)
    fig = Figure(figsize=(7.5, 0.45 * len(pairs) + 1.4), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(pairs))[::-1]
    for row, yi in zip(pairs.itertuples(index=False), y, strict=True):
        significant = bool(row.significant)
        color = "tab:red" if significant else "tab:gray"
        if np.isfinite(row.ci_low):
            ax.plot([100 * row.ci_low, 100 * row.ci_high], [yi, yi], color=color, linewidth=2)
        ax.plot(100 * row.mean_diff, yi, "o", color=color, markersize=7,
                markerfacecolor=color if significant else "white")  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{a} − {b}" for a, b in zip(pairs["a"], pairs["b"], strict=True)])
    ax.set_xlabel(f"difference in {metric_label} (percentage points), 95% CI")
    ax.set_title("Paired differences (filled: significant at 5%, Holm)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_lr_sensitivity(
    sensitivity: pd.DataFrame,
    selected: pd.DataFrame | None = None,
    colors: Mapping[str, object] | None = None,
) -> Figure:
    """Validation accuracy vs learning rate (log x) per activation, mean +- 95% CI over
    seeds (`stats.lr_sensitivity` for one depth); a star marks each selected lr."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    activations = list(dict.fromkeys(sensitivity["activation"]))
    colors = dict(colors or arm_colors(activations))
    for activation, group in sensitivity.groupby("activation", sort=False):
        group = group.sort_values("lr")
        _band(ax, group["lr"], 100 * group["mean"], 100 * group["ci_low"], 100 * group["ci_high"],
              colors[activation], str(activation))  # fmt: skip
        if selected is not None:
            chosen = selected[selected["activation"] == activation]
            for lr in chosen["lr"]:
                score = group.loc[group["lr"] == lr, "mean"]
                if len(score):
                    ax.plot(lr, 100 * score.iloc[0], "*", color=colors[activation], markersize=14,
                            markeredgecolor="black")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning-rate sensitivity (star: selected on validation)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_depth_study(summary: pd.DataFrame, colors: Mapping[str, object] | None = None) -> Figure:
    """Final test accuracy vs depth per arm, mean with 95% CI error bars
    (`stats.summary_table` rows with a depth)."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    arms = list(dict.fromkeys(summary["arm"]))
    colors = dict(colors or arm_colors(arms))
    for arm, group in summary.groupby("arm", sort=False):
        group = group.sort_values("depth")
        mean = 100 * group["final_test_acc_mean"]
        error = 100 * (group["final_test_acc_ci_high"] - group["final_test_acc_mean"])
        ax.errorbar(group["depth"].astype(float), mean, yerr=error.fillna(0), color=colors[arm],
                    label=str(arm), marker="o", capsize=3)  # fmt: skip
    ax.set_xscale("log", base=2)
    depths = sorted({int(d) for d in summary["depth"]})
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Depth study")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_gradient_norms(diagnostics: pd.DataFrame) -> Figure:
    """Gradient norm of each weight layer over epochs (log y), one panel per activation,
    mean over seeds. `diagnostics` holds the rows of one depth and one lr per activation."""
    activations = list(dict.fromkeys(diagnostics["activation"]))
    ncols = min(4, len(activations))
    nrows = math.ceil(len(activations) / ncols)
    fig = Figure(figsize=(3.8 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    layers = sorted(diagnostics["layer"].unique())
    cmap = matplotlib.colormaps["viridis"]
    for ax, activation in zip(axes, activations, strict=False):
        own = diagnostics[diagnostics["activation"] == activation]
        mean = own.groupby(["layer", "epoch"])["grad_norm"].mean()
        for i, layer in enumerate(layers):
            if layer in mean.index.get_level_values(0):
                series = mean.loc[layer]
                ax.plot(series.index, series.to_numpy(), marker="o", markersize=3,
                        color=cmap(i / max(1, len(layers) - 1)), label=f"layer {layer}")  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(str(activation), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(activations) :]:
        ax.set_visible(False)
    axes[0].set_ylabel("weight-gradient norm")
    axes[0].legend(fontsize=7)
    fig.suptitle("Gradient norm per layer (mean over seeds)")
    return fig


def plot_unit_health(
    diagnostics: pd.DataFrame, colors: Mapping[str, object] | None = None
) -> Figure:
    """Dead and saturated fractions of hidden units over epochs per activation (mean over
    hidden layers and seeds), in percent."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    hidden = diagnostics[diagnostics["dead_frac"].notna() | diagnostics["saturated_frac"].notna()]
    activations = list(dict.fromkeys(diagnostics["activation"]))
    colors = dict(colors or arm_colors(activations))
    for ax, column, title in zip(axes, ("dead_frac", "saturated_frac"),
                                 ("Dead units (%)", "Saturated units (%)"), strict=True):  # fmt: skip
        for activation, group in hidden.groupby("activation", sort=False):
            series = group.groupby("epoch")[column].mean()
            ax.plot(series.index, 100 * series.to_numpy(), marker="o", markersize=3,
                    color=colors[activation], label=str(activation))  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig

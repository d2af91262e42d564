"""Matplotlib figures. Every function returns a Figure and never opens a window;
`save_figure` writes PNG or SVG by the file's suffix."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

matplotlib.use("Agg")  # never open a window, also when a display is present

# === activation curves (catalog) ==========================================================

_DERIVATIVE_NAMES = {0: "f(x)", 1: "f'(x)", 2: "f''(x)"}
_DERIVATIVE_TITLES = {0: "Activation", 1: "First derivative", 2: "Second derivative"}
FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def activation_curves(
    spec: object, x: np.ndarray, derivatives: Sequence[int] = (0, 1)
) -> dict[int, np.ndarray]:
    """f and its derivatives (by autograd, float64) on the points ``x``, by order.
    Entries that mix units are drawn on ``catalog.scalar_view`` (softmax: unit 0 of [x, 0])."""
    import torch

    from actlab.catalog.properties import scalar_view

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


JUMP_FACTOR = 20.0  # a step this many times larger than its neighbours is a discontinuity


def break_discontinuities(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sampled curve with its jumps and isolated spikes taken out, for drawing.

    A line plot joins every pair of neighbouring samples, so relu's f' (0, then 1) gets a
    vertical segment at 0 that is not part of the function, and an autograd value at a
    kink (sparsemax's f' at -1) becomes a spike. Here a sample that differs from both
    neighbours in the same direction by more than JUMP_FACTOR x the steps beside it is
    dropped (NaN), and a step more than JUMP_FACTOR x both neighbouring steps gets a NaN
    inserted between its samples (matplotlib breaks the line at NaN). Smooth curves,
    even steep ones (exp), are left whole: their neighbouring steps are alike."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float).copy()
    finite = y[np.isfinite(y)]
    if len(y) < 4 or not len(finite):
        return x, y
    tiny = 1e-9 * max(1.0, float(np.ptp(finite)))
    step = np.diff(y)
    before = np.abs(np.r_[0.0, step[:-2]])  # the step before step[i - 1], for y[i]
    after = np.abs(np.r_[step[2:], 0.0])
    left, right = step[:-1], step[1:]  # into y[i] and out of y[i], i = 1..n-2
    spike = (np.sign(left) == -np.sign(right)) & (np.minimum(np.abs(left), np.abs(right)) > tiny)
    spike &= np.minimum(np.abs(left), np.abs(right)) > JUMP_FACTOR * np.maximum(before, after)
    y[1:-1][spike] = np.nan
    step = np.abs(np.diff(y))
    neighbours = np.maximum(np.r_[0.0, step[:-1]], np.r_[step[1:], 0.0])
    jump = (step > tiny) & (step > JUMP_FACTOR * np.nan_to_num(neighbours, nan=np.inf))
    where = np.flatnonzero(jump) + 1
    return np.insert(x, where, np.nan), np.insert(y, where, np.nan)


def plot_activations(
    specs: Sequence[object],
    x_range: tuple[float, float] = (-5.0, 5.0),
    derivatives: Sequence[int] = (0, 1),
) -> Figure:
    """One panel per derivative order (0: f, 1: f', 2: f''), one line per activation, all
    derivatives by autograd. Labels are the specs as the user typed them (``swish``, not
    the catalog's ``silu``); specs that are not strings get the catalog's label."""
    from actlab.catalog.registry import canonical_label
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
        label = spec.strip() if isinstance(spec, str) else canonical_label(spec)
        curves = activation_curves(spec, x, orders)
        # A line style per curve, so that overlapping curves (relu, leaky_relu) stay visible.
        style = ("-", "--", "-.", ":")[index % 4]
        for ax, order in zip(axes, orders, strict=True):
            xs, ys = break_discontinuities(x, curves[order])
            ax.plot(xs, ys, style, color=palette[index % len(palette)], label=label,
                    linewidth=2.0)  # fmt: skip
    for ax, order in zip(axes, orders, strict=True):
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_title(_DERIVATIVE_TITLES[order])
        ax.set_xlabel("x")
        ax.set_ylabel(_DERIVATIVE_NAMES[order])
        ax.set_xlim(low, high)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=LEGEND_FONT_SIZE - 1, loc="best")
    fig.suptitle("Activation functions" + (" and derivatives (autograd)" if orders != [0] else ""))
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG, PDF or JPEG by the file's suffix (creating the folder)."""
    from actlab.errors import ConfigError

    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ConfigError(
            f"cannot write a figure to {str(path)!r}; use a name ending in {', '.join(FIGURE_SUFFIXES)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    plain_text(fig).savefig(path, dpi=150)
    return path


def tick_number(value: float) -> str:
    """A tick value as short plain text: 0.001, 0.0003, 10, 1e-5, 2e6 (``%g``, exponent
    without '+' and leading zeros)."""
    text = f"{value:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


class PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain text (0.01, 0.1, 1, 2e-5) where matplotlib's default,
    ``LogFormatterSciNotation``, writes mathtext (``$\\mathdefault{10^{-2}}$``) that
    :func:`plain_text` would show as code. Which ticks get a label is matplotlib's
    ``LogFormatter`` logic: every decade, and minor ticks only on an axis too short to show
    two decades."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return tick_number(x) if super().__call__(x, pos) else ""


def plain_log_axis(axis) -> None:
    """Put :class:`PlainLogFormatter` on a log-scaled ``ax.xaxis`` / ``ax.yaxis`` (major and
    minor ticks, as matplotlib's log scale sets its own formatters)."""
    base = axis.get_transform().base
    axis.set_major_formatter(PlainLogFormatter(base))
    axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def tick_labels_overlap(fig: Figure, axis) -> bool:
    """Whether two visible tick labels of ``axis`` overlap, or come closer than a third of
    their font size (touching labels read as one number), once ``fig`` is laid out."""
    fig.draw_without_rendering()  # runs the layout; the boxes are then final
    labels = [
        label
        for label in axis.get_ticklabels(which="both")
        if label.get_visible() and label.get_text()
    ]
    boxes = [
        label.get_window_extent().padded(label.get_size() * fig.dpi / 72 / 6) for label in labels
    ]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


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
    "test_acc": "Test accuracy",
    "val_acc": "Validation accuracy",
}
_CURVE_LABELS = {
    "train_loss": "training loss (cross-entropy)",
    "test_loss": "test loss (cross-entropy)",
    "test_acc": "test accuracy (%)",
    "val_acc": "validation accuracy (%)",
}
# The range a metric can take: bands are clipped to it (a t band over 2 seeds can reach
# 110% accuracy or a negative loss).
_METRIC_RANGE = {"acc": (0.0, 100.0), "loss": (0.0, math.inf)}
LEGEND_FONT_SIZE = 11  # points; at the report's width a legend stays readable (>= ~10 px)
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MIN_SEEDS_FOR_CI = 3  # with 2 seeds a t interval is too wide to mean much: show min-max


def arm_colors(arms: Sequence[str]) -> dict[str, object]:
    """One fixed colour per arm, so that every chart of a report agrees."""
    palette = matplotlib.colormaps["tab10"].colors
    return {arm: palette[i % len(palette)] for i, arm in enumerate(arms)}


def arm_styles(arms: Sequence[str]) -> dict[str, dict]:
    """A line style and a marker per arm (with its colour), so that overlapping curves
    (relu under leaky_relu) stay visible: matplotlib keyword arguments by arm."""
    colors = arm_colors(arms)
    return {
        arm: {
            "color": colors[arm],
            "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
            "marker": MARKERS[i % len(MARKERS)],
        }  # fmt: skip
        for i, arm in enumerate(arms)
    }


def band_kind(n: int) -> str:
    """What the band around a mean over `n` seeds is: "95% CI" (Student t, n >= 3),
    "min-max" (n = 2) or "" (one seed: no band)."""
    if n >= MIN_SEEDS_FOR_CI:
        return "95% CI"
    return "min-max" if n == 2 else ""


def band_caption(counts: Sequence[int]) -> str:
    """Caption words for the bands of curves whose points have these seed counts."""
    kinds = sorted({band_kind(int(n)) for n in counts}, key=len, reverse=True)
    named = [
        {
            "95% CI": "bands: 95% CI (Student t over seeds)",
            "min-max": "bands: min-max over 2 seeds",
            "": "no band (1 seed)",
        }[kind]  # fmt: skip
        for kind in kinds
    ]
    return "; ".join(named)


def metric_range(column: str) -> tuple[float, float]:
    """The range of a metric as charted: accuracies 0-100%, losses from 0."""
    return _METRIC_RANGE["acc" if column in _PERCENT_COLUMNS or "acc" in column else "loss"]


def curve_band(
    group: pd.DataFrame, column: str, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The band of one arm's curve (rows of `stats.curves`, one per epoch): the t interval
    where n >= 3, min-max where n = 2, NaN (no band) where n = 1; scaled and clipped to
    the metric's range."""
    n = group["n"].to_numpy()
    use_ci = n >= MIN_SEEDS_FOR_CI
    has_minmax = "min" in group and "max" in group
    low = np.where(use_ci, group["ci_low"], group["min"] if has_minmax else np.nan)
    high = np.where(use_ci, group["ci_high"], group["max"] if has_minmax else np.nan)
    low = np.where(n >= 2, low.astype(float), np.nan) * scale
    high = np.where(n >= 2, high.astype(float), np.nan) * scale
    lo, hi = metric_range(column)
    return np.clip(low, lo, hi), np.clip(high, lo, hi)


def _band(ax, x, mean, low, high, style: Mapping, label: str) -> None:
    ax.plot(x, mean, label=label, linewidth=1.8, markersize=5, **style)
    if np.isfinite(np.asarray(low, dtype=float)).any():
        ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)


def _styles(arms: Sequence[str], colors: Mapping[str, object] | None) -> dict[str, dict]:
    styles = arm_styles(arms)
    for arm in arms:
        if colors is not None and arm in colors:
            styles[arm]["color"] = colors[arm]
    return styles


def _figure_legend(fig: Figure, axes, extra: Sequence[tuple] = ()) -> None:
    """One legend for the figure, below the panels, at a readable size."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5),
                   fontsize=LEGEND_FONT_SIZE, frameon=False)  # fmt: skip


def plot_training_curves(
    curves: Mapping[str, pd.DataFrame], colors: Mapping[str, object] | None = None
) -> Figure:
    """One panel per metric (e.g. train_loss, test_loss, test_acc) vs epoch; one line per
    arm (its own colour, line style and marker) with the mean over seeds and a band: the
    95% t interval with 3 seeds or more, min-max with 2, none with 1 (see `curve_band`),
    clipped to the metric's range. `curves[column]` is `stats.curves(...)` for one depth."""
    from matplotlib.patches import Patch

    columns = list(curves)
    fig = Figure(figsize=(4.6 * len(columns), 4.3), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    arms = list(dict.fromkeys(a for frame in curves.values() for a in frame["arm"]))
    styles = _styles(arms, colors)
    counts = []
    for ax, column in zip(axes, columns, strict=True):
        scale = 100.0 if column in _PERCENT_COLUMNS else 1.0
        for arm, group in curves[column].groupby("arm", sort=False):
            group = group.sort_values("epoch")
            low, high = curve_band(group, column, scale)
            _band(ax, group["epoch"], group["mean"] * scale, low, high, styles[arm], str(arm))
            counts += list(group["n"])
        ax.set_title(_CURVE_TITLES.get(column, column))
        ax.set_xlabel("epoch")
        _epoch_ticks(ax)
        ax.set_ylabel(_CURVE_LABELS.get(column, column))
        ax.grid(alpha=0.3)
    caption = band_caption(counts) if counts else ""
    extra = [(Patch(color="gray", alpha=0.25), caption)] if "bands:" in caption else []
    _figure_legend(fig, axes, extra)
    return fig


def plot_differences(pairs: pd.DataFrame, metric_label: str = "final test accuracy") -> Figure:
    """Pairwise gaps a - b in percentage points with the interval that matches each pair's
    word (`stats.pairwise`: Holm-level, sign-flip; none when the seeds are too few);
    filled markers are significant after Holm's correction, hollow ones are not."""
    pairs = pairs.reset_index(drop=True)
    fig = Figure(figsize=(7.5, 0.45 * len(pairs) + 1.6), layout="constrained")
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
    ax.set_xlabel(f"difference in {metric_label} (percentage points), Holm-level CI")
    ax.set_ylabel("pair (first − second)")
    ax.set_title("Paired differences (filled: significant at 5%, Holm)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_lr_sensitivity(
    sensitivity: pd.DataFrame,
    selected: pd.DataFrame | None = None,
    colors: Mapping[str, object] | None = None,
) -> Figure:
    """Validation accuracy vs learning rate (log x) per activation, mean over seeds with a
    band (95% t interval with 3 seeds or more, none with fewer: `stats.lr_sensitivity`
    has no min-max), clipped to 0-100%; a star marks each selected lr."""
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    activations = list(dict.fromkeys(sensitivity["activation"]))
    styles = _styles(activations, colors)
    for activation, group in sensitivity.groupby("activation", sort=False):
        group = group.sort_values("lr")
        low, high = 100 * group["ci_low"], 100 * group["ci_high"]
        if "n" in group and (group["n"] < MIN_SEEDS_FOR_CI).any():
            low = high = pd.Series(np.nan, index=group.index)
        _band(ax, group["lr"], 100 * group["mean"], np.clip(low, 0, 100), np.clip(high, 0, 100),
              styles[activation], str(activation))  # fmt: skip
        if selected is not None:
            chosen = selected[selected["activation"] == activation]
            for lr in chosen["lr"]:
                score = group.loc[group["lr"] == lr, "mean"]
                if len(score):
                    ax.plot(lr, 100 * score.iloc[0], "*", color=styles[activation]["color"],
                            markersize=14, markeredgecolor="black")  # fmt: skip
    ax.set_xscale("log")
    # Ticks at the tested learning rates only, so that no label names an untested one.
    tested = sorted({float(lr) for lr in sensitivity["lr"]})
    ax.set_xticks(tested, [tick_number(lr) for lr in tested])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("learning rate (tested values)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning-rate sensitivity (star: selected on validation)")
    ax.grid(alpha=0.3)
    _figure_legend(fig, [ax])
    if tick_labels_overlap(fig, ax.xaxis):  # many or close lrs: upright labels fit
        ax.tick_params(axis="x", labelrotation=90)
    return fig


def plot_depth_study(
    summary: pd.DataFrame,
    colors: Mapping[str, object] | None = None,
    members: pd.DataFrame | None = None,
) -> Figure:
    """Final test accuracy vs depth per arm, mean with error bars: the 95% CI with 3 seeds
    or more (`stats.summary_table` rows with a depth), min-max over the seeds with 2 (from
    `members`, `stats.arm_results` rows, when given), clipped to 0-100%."""
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    arms = list(dict.fromkeys(summary["arm"]))
    styles = _styles(arms, colors)
    for arm, group in summary.groupby("arm", sort=False):
        group = group.sort_values("depth")
        mean = 100 * group["final_test_acc_mean"]
        high, low = group["final_test_acc_ci_high"], group["final_test_acc_ci_low"]
        if members is not None:
            ok = members[(members["arm"] == arm) & ~members["diverged"]]
            spread = ok.groupby(ok["depth"].astype(float))["final_test_acc"].agg(["min", "max"])
            few = (group["n"] < MIN_SEEDS_FOR_CI).to_numpy()
            depth = group["depth"].astype(float)
            high = np.where(few, depth.map(spread["max"]), high)
            low = np.where(few, depth.map(spread["min"]), low)
        high = pd.Series(np.minimum(100 * np.asarray(high, dtype=float), 100.0), index=group.index)
        low = pd.Series(np.maximum(100 * np.asarray(low, dtype=float), 0.0), index=group.index)
        error = np.vstack([(mean - low).fillna(0), (high - mean).fillna(0)])
        ax.errorbar(group["depth"].astype(float), mean, yerr=error, label=str(arm), capsize=3,
                    **styles[arm])  # fmt: skip
    ax.set_xscale("log", base=2)
    depths = sorted({int(d) for d in summary["depth"]})
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_locator(ticker.NullLocator())  # ticks at the tested depths only
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Depth study")
    ax.grid(alpha=0.3)
    _figure_legend(fig, [ax])
    return fig


GRADIENT_NORM_LABEL = "L2 norm of the weight gradient (mean over the epoch's steps)"


def plot_gradient_norms(diagnostics: pd.DataFrame) -> Figure:
    """The L2 norm of each weight layer's gradient, averaged over the epoch's training steps
    (diagnostics.csv's grad_norm), over epochs (log y), one panel per activation, mean over
    seeds. `diagnostics` holds the rows of one depth and one lr per activation."""
    activations = list(dict.fromkeys(diagnostics["activation"]))
    ncols = min(4, len(activations))
    nrows = math.ceil(len(activations) / ncols)
    fig = Figure(figsize=(3.9 * ncols, 3.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    layers = sorted(diagnostics["layer"].unique())
    cmap = matplotlib.colormaps["viridis"]
    for ax, activation in zip(axes, activations, strict=False):
        own = diagnostics[diagnostics["activation"] == activation]
        mean = own.groupby(["layer", "epoch"])["grad_norm"].mean()
        for i, layer in enumerate(layers):
            if layer in mean.index.get_level_values(0):
                series = mean.loc[layer]
                ax.plot(series.index, series.to_numpy(), marker=MARKERS[i % len(MARKERS)],
                        linestyle=LINE_STYLES[i % len(LINE_STYLES)], markersize=4,
                        color=cmap(i / max(1, len(layers) - 1)), label=f"layer {layer}")  # fmt: skip
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_title(str(activation), fontsize=11)
        ax.set_xlabel("epoch")
        _epoch_ticks(ax)
        ax.set_ylabel("gradient L2 norm")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(activations) :]:
        ax.set_visible(False)
    _figure_legend(fig, axes[: len(activations)])
    fig.suptitle(f"Weight-gradient norm per layer: {GRADIENT_NORM_LABEL}, mean over seeds",
                 fontsize=11)  # fmt: skip
    return fig


def plot_unit_health(
    diagnostics: pd.DataFrame,
    colors: Mapping[str, object] | None = None,
    layer_labels: Mapping[int, str] | None = None,
) -> Figure:
    """Dead and saturated fractions of the units of each hidden layer over epochs, in
    percent, mean over seeds: one line per activation (its colour and marker) and hidden
    layer (its line style), never averaged over layers, so that the chart shows the very
    numbers the diagnostics sentences quote. `layer_labels`: a name per layer number
    (``block 1 FFN``), else ``layer N``."""
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    hidden = diagnostics[diagnostics["dead_frac"].notna() | diagnostics["saturated_frac"].notna()]
    activations = list(dict.fromkeys(diagnostics["activation"]))
    styles = _styles(activations, colors)
    layers = sorted(hidden["layer"].unique())

    def name(layer) -> str:
        return layer_labels[layer] if layer_labels else f"layer {layer}"

    for ax, column, title in zip(axes, ("dead_frac", "saturated_frac"),
                                 ("Dead units", "Saturated units"), strict=True):  # fmt: skip
        for activation, group in hidden.groupby("activation", sort=False):
            for i, layer in enumerate(layers):
                series = group[group["layer"] == layer].groupby("epoch")[column].mean()
                if not len(series):
                    continue
                style = {**styles[activation], "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
                ax.plot(series.index, 100 * series.to_numpy(), markersize=4, linewidth=1.6,
                        label=f"{activation}, {name(layer)}", **style)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _epoch_ticks(ax)
        ax.set_ylabel(f"{title.lower()} of the layer (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], **{**styles[a], "linestyle": "-"}, label=a) for a in activations]
    handles += [
        Line2D(
            [],
            [],
            color="black",
            linestyle=LINE_STYLES[i % len(LINE_STYLES)],
            label=layer_labels[layer] if layer_labels else f"hidden layer {layer}",
        )  # fmt: skip
        for i, layer in enumerate(layers)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
               fontsize=LEGEND_FONT_SIZE, frameon=False)  # fmt: skip
    return fig


def _epoch_ticks(ax) -> None:
    """Epochs are whole numbers: tick only integers (a 1-epoch run showed 0.96 ... 1.04;
    MaxNLocator falls back to fractions unless one integer tick is enough)."""
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))

"""The report's rough edges (issue 12), checked on the figures and the HTML themselves:
every axis labelled, a readable legend, distinct line styles, bands inside the metric's
range and named, per-layer diagnostics that show the sentences' numbers, derivative plots
without false vertical segments, integer ranks, what is compared named, code as code."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from fixtures.run_dir import write_run
from matplotlib.collections import PolyCollection

from actlab.report import page, plots, stats
from actlab.report import render as report
from actlab.report.render import analyse, charts, render_html, summary_rows, verdict
from actlab.study.store import read_run


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    # Noisy enough that a t band over 2 seeds (t = 12.7) leaves 0-100%.
    path = tmp_path_factory.mktemp("two") / "run"
    return read_run(write_run(path, seeds=(0, 1), activations=("relu", "leaky_relu"),
                              noise=0.05))  # fmt: skip


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    path = tmp_path_factory.mktemp("three") / "run"
    return read_run(write_run(path, activations=("relu", "leaky_relu", "tanh", "sigmoid")))


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def _band_values(ax) -> np.ndarray:
    return np.concatenate([band.get_paths()[0].vertices[:, 1] for band in _bands(ax)])


_FIGURES: dict[int, list] = {}


def _figures(run):
    if id(run) not in _FIGURES:  # each module-scoped run is charted once
        _FIGURES[id(run)] = [(caption, fig) for _, caption, fig in charts(analyse(run))]
    return _FIGURES[id(run)]


def _legend_texts(fig):
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return legends, [t for legend in legends for t in legend.get_texts()]


@pytest.mark.parametrize("fixture", ["two_seeds", "three_seeds"])
def test_every_chart_has_labelled_axes_and_a_readable_legend(fixture, request):
    run = request.getfixturevalue(fixture)
    figures = _figures(run)
    assert len(figures) >= 4  # curves, activations, differences, diagnostics
    for caption, fig in figures:
        for ax in (ax for ax in fig.axes if ax.get_visible()):
            assert ax.get_xlabel() and ax.get_ylabel(), f"{caption}: unlabelled axis"
        if "Paired differences" in caption:
            continue  # one comparison per row: the tick labels name them
        legends, texts = _legend_texts(fig)
        assert legends, f"{caption}: no legend"
        assert min(t.get_fontsize() for t in texts) >= 10, f"{caption}: legend under 10 pt"


def test_two_seed_bands_are_min_max_inside_the_range_and_say_so(two_seeds):
    (caption, fig), *_ = _figures(two_seeds)
    assert "min-max over 2 seeds" in caption and "95% CI" not in caption
    loss, accuracy = fig.axes[1], fig.axes[2]
    assert _bands(accuracy) and _bands(loss)
    assert _band_values(accuracy).max() <= 100 and _band_values(accuracy).min() >= 0
    assert _band_values(loss).min() >= 0
    # the oracle: the band is exactly the min and max over the seeds of each epoch
    metrics = two_seeds.metrics
    relu = metrics[metrics["activation"] == "relu"].groupby("epoch")["test_acc"]
    vertices = _bands(accuracy)[0].get_paths()[0].vertices[:, 1]
    assert np.allclose(sorted(set(np.round(vertices, 6))),
                       sorted(set(np.round(100 * np.r_[relu.min(), relu.max()], 6))))  # fmt: skip
    # the t interval would have left the range: this is what the clipping is for
    curve = stats.curves(metrics, "test_acc", {(None, "relu", 1e-3): "relu"})
    assert (100 * curve["ci_high"]).max() > 100 or (100 * curve["ci_low"]).min() < 0
    assert any("min-max" in t.get_text() for t in _legend_texts(fig)[1])


def test_three_seed_bands_are_t_intervals_clipped_to_the_range():
    curve = pd.DataFrame({"arm": "relu", "epoch": [1, 2], "n": [3, 3], "mean": [0.95, 0.99],
                          "ci_low": [0.90, 0.96], "ci_high": [1.00, 1.03],
                          "min": [0.93, 0.98], "max": [0.97, 1.0]})  # fmt: skip
    fig = plots.plot_training_curves({"test_acc": curve})
    values = _band_values(fig.axes[0])
    assert values.max() == pytest.approx(100.0) and values.min() == pytest.approx(90.0)
    assert plots.band_caption([3, 3]) == "bands: 95% CI (Student t over seeds)"
    assert plots.band_caption([1]) == "no band (1 seed)"


def test_one_seed_caption_names_no_band(tmp_path):
    single = read_run(write_run(tmp_path / "one", seeds=(0,), diagnostics=False))
    (caption, fig), *_ = _figures(single)
    assert "no band (1 seed)" in caption and "CI" not in caption
    assert all(not _bands(ax) for ax in fig.axes)


def test_curves_that_overlap_stay_distinguishable(three_seeds):
    (_, fig), *_ = _figures(three_seeds)
    lines = fig.axes[2].get_lines()
    styles = {(line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == 4 and len(styles) == 4


def test_unit_health_is_per_layer_and_shows_the_sentence_numbers(three_seeds):
    analysis = analyse(three_seeds)
    sentence = next(s for s in analysis.findings if "dead" in s)
    match = re.match(r"relu: (\d+)% of layer-(\d) units are dead at epoch (\d+)", sentence)
    percent, layer, epoch = (int(g) for g in match.groups())
    caption, fig = next((c, f) for c, f in _figures(three_seeds) if c.startswith("Dead"))
    assert "each hidden layer" in caption
    dead_ax = fig.axes[0]
    line = next(
        ln for ln in dead_ax.get_lines() if ln.get_label() == f"relu, layer {layer}"
    )  # per layer, labelled
    value = dict(zip(line.get_xdata(), line.get_ydata(), strict=True))[epoch]
    assert round(value) == percent
    hidden_layers = three_seeds.diagnostics.dropna(subset=["dead_frac"])["layer"].nunique()
    assert len(dead_ax.get_lines()) == 4 * hidden_layers  # activations x hidden layers
    saturation = [s for s in analysis.findings if "saturated" in s]
    last = int(three_seeds.metrics["epoch"].max())
    assert saturation and all(s.endswith(f"at epoch {last}") for s in saturation)


def test_gradient_norm_chart_names_the_norm(three_seeds):
    caption, fig = next((c, f) for c, f in _figures(three_seeds) if "gradient" in c)
    assert "L2 norm of the weight gradient (mean over the epoch's steps)" in caption
    assert "L2" in fig.axes[0].get_ylabel()


def test_derivative_plots_break_at_jumps_and_drop_kink_spikes():
    x = np.linspace(-5, 5, 1201)
    relu = plots.activation_curves("relu", x, (1,))[1]
    xs, ys = plots.break_discontinuities(x, relu)
    assert np.isnan(ys).sum() == 1 and abs(xs[np.flatnonzero(np.isnan(xs))[0] - 1]) < 1e-9
    # the drawn segments never join the two sides of the jump
    finite = np.isfinite(ys)
    steps = np.abs(np.diff(ys))[finite[:-1] & finite[1:]]
    assert steps.max() < 1e-9
    sparse = plots.activation_curves("sparsemax(dim=-1)", x, (1,))[1]
    _, ys = plots.break_discontinuities(x, sparse)
    finite = np.isfinite(ys)
    assert np.nanmax(ys) <= 0.5 + 1e-9  # the autograd spike at the kink x = -1 is gone
    assert np.abs(np.diff(ys))[finite[:-1] & finite[1:]].max() < 1e-6
    for smooth in ("exp", "gelu", "sigmoid"):
        curve = plots.activation_curves(smooth, x, (1,))[1]
        xs, ys = plots.break_discontinuities(x, curve)
        assert np.array_equal(ys, curve), smooth  # smooth curves are drawn whole
    fig = plots.plot_activations(["relu", "swish"], (-3, 3), (0, 1))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["relu", "swish"]


def test_ranks_are_integers_and_an_all_diverged_arm_is_marked(tmp_path):
    run = read_run(write_run(tmp_path / "r", seeds=(0,), diverge=("tanh", 0)))
    header, rows = summary_rows(analyse(run))
    ranks = [row[header.index("rank")] for row in rows]
    assert ranks[:2] == ["1", "2"] and ranks[2] == "3 (all diverged)"  # failures rank last
    assert report.rank_text(float("nan"), 3, 0) == "–" and report.rank_text(2.0, 3, 0) == "2"


def test_what_is_compared_is_counted_and_named(tmp_path):
    run = read_run(write_run(tmp_path / "lrs", activations=("relu", "tanh"), lrs=(1e-3, 1e-2)))
    opening = verdict(analyse(run))[0]
    assert opening.startswith(
        "4 activation-lr pairs (relu and tanh, each at lr 0.001 and 0.01) on fashion-mnist"
    )
    run = read_run(write_run(tmp_path / "three", activations=("relu", "tanh", "sigmoid")))
    assert verdict(analyse(run))[0].startswith("3 activations (relu, tanh and sigmoid) on")


def test_lr_selection_states_the_epochs_averaged(tmp_path):
    run = read_run(write_run(tmp_path / "sel", lrs=(3e-4, 1e-3), val_size=500, select="val",
                             epochs=2, diagnostics=False))  # fmt: skip
    text = " ".join(verdict(analyse(run)))
    assert "over all 2 epochs (1-2)" in text and "last 3 epochs" not in text
    run = read_run(write_run(tmp_path / "sel4", lrs=(3e-4, 1e-3), val_size=500, select="val",
                             epochs=4, diagnostics=False))  # fmt: skip
    assert "over the last 3 epochs (2-4)" in " ".join(verdict(analyse(run)))


def test_code_is_rendered_as_code(tmp_path, monkeypatch):
    run = read_run(write_run(tmp_path / "one", seeds=(0,), diagnostics=False))
    monkeypatch.setattr(report, "charts", lambda analysis: [])  # the text alone
    text = render_html(analyse(run))
    assert "<code>actlab report RUN_A RUN_B</code>" in text
    assert "`" not in re.sub(r"<img [^>]*>", "", text)
    assert page.inline_code("run `a < b` now") == "run <code>a &lt; b</code> now"


def test_percent_axis_never_leaves_its_range():
    assert plots.metric_range("test_acc") == (0.0, 100.0)
    assert plots.metric_range("train_loss") == (0.0, math.inf)


def test_depth_chart_error_bars_are_min_max_with_two_seeds(tmp_path):
    from matplotlib.collections import LineCollection

    run = read_run(write_run(tmp_path / "d", depths=(2, 4), seeds=(0, 1), diagnostics=False,
                             noise=0.05))  # fmt: skip
    caption, fig = next((c, f) for c, f in _figures(run) if c.startswith("Final test accuracy"))
    assert "min-max over the seeds with 2" in caption
    assert fig.axes[0].get_ylabel() == "final test accuracy (%)"
    bars = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    arms = stats.arm_results(stats.member_results(run.metrics))
    relu = arms[(arms["arm"] == "relu") & (arms["depth"] == 2)]["final_test_acc"]
    segments = [sorted(seg[:, 1]) for bar in bars for seg in bar.get_segments()]
    assert any(np.allclose(seg, [100 * relu.min(), 100 * relu.max()]) for seg in segments)


def test_names_are_text_in_every_table_and_only_the_selected_lr_is_bold(tmp_path, monkeypatch):
    """The templates escape every text (autoescape); bold comes from the cell's `strong`, never
    from markup in a name (the old tables escaped, then un-escaped <b>)."""
    spec = "expr:x*(x<b>0)"
    run = read_run(write_run(tmp_path / "run", activations=("relu", spec), lrs=(1e-3, 3e-3),
                             val_size=500, select="val", diagnostics=False))  # fmt: skip
    monkeypatch.setattr(report, "charts", lambda analysis: [])
    text = render_html(analyse(run))
    assert "x&lt;b&gt;0" in text and "x<b>0" not in text
    lr_table = text.split('id="lr-table"')[1].split("</table>")[0]
    assert lr_table.count("<b>") == 2  # one selected lr per activation
    markdown = report.render_markdown(analyse(run))
    assert "x&lt;b&gt;0" in markdown and "**" in markdown

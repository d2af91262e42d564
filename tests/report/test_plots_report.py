"""Report charts: each returns a Figure with the expected panels, lines, bands and scales."""

import io

import pytest
from fixtures.run_dir import write_run
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from actlab.report import plots, stats
from actlab.study.store import read_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run"
    return read_run(write_run(path, lrs=(3e-4, 1e-3), val_size=500, select="val", seeds=(0, 1, 2)))


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def _png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


def test_training_curves_have_a_band_per_activation(run):
    results = stats.member_results(run.metrics)
    arms = stats.arm_results(results, stats.select_lr(results))
    arm_of = {
        (None, a, lr): arm
        for a, lr, arm in arms[["activation", "lr", "arm"]].itertuples(index=False)
    }
    curves = {
        c: stats.curves(run.metrics, c, arm_of) for c in ("train_loss", "test_loss", "test_acc")
    }
    fig = plots.plot_training_curves(curves)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.get_lines()) == 3 and len(_bands(ax)) == 3
    accuracy = fig.axes[2].get_lines()[0].get_ydata()
    assert 40 < max(accuracy) <= 100  # shown in percent
    assert _png(fig)[:4] == b"\x89PNG"


def test_single_seed_curves_have_no_band(tmp_path):
    single = read_run(write_run(tmp_path / "one", seeds=(0,), diagnostics=False))
    arm_of = {(None, a, 1e-3): a for a in single.config.activations}
    fig = plots.plot_training_curves({"test_acc": stats.curves(single.metrics, "test_acc", arm_of)})
    assert len(fig.axes[0].get_lines()) == 3 and _bands(fig.axes[0]) == []


def test_difference_chart_marks_significance():
    import pandas as pd

    pairs = pd.DataFrame({
        "a": ["relu", "relu"], "b": ["tanh", "sigmoid"], "mean_diff": [0.001, 0.04],
        "ci_low": [-0.002, 0.03], "ci_high": [0.004, 0.05], "significant": [False, True],
    })  # fmt: skip
    fig = plots.plot_differences(pairs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    by_y = dict(zip(ax.get_yticks(), labels, strict=True))
    assert [by_y[y] for y in sorted(by_y, reverse=True)] == ["relu − tanh", "relu − sigmoid"]
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    faces = sorted(str(m.get_markerfacecolor()) for m in markers)
    assert len(markers) == 2 and "white" in faces


def test_lr_sensitivity_is_log_x_with_stars(run):
    results = stats.member_results(run.metrics)
    selected = stats.select_lr(results)
    fig = plots.plot_lr_sensitivity(stats.lr_sensitivity(results), selected)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len([line for line in ax.get_lines() if line.get_marker() == "*"]) == 3
    assert len(_bands(ax)) == 3


def test_depth_study_chart(tmp_path):
    depth_run = read_run(
        write_run(tmp_path / "d", depths=(2, 4, 8), seeds=(0, 1), diagnostics=False)
    )
    arms = stats.arm_results(stats.member_results(depth_run.metrics))
    fig = plots.plot_depth_study(stats.summary_table(arms))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "8"]
    assert len(fig.legends[0].get_texts()) == 3  # one legend for the figure


def test_diagnostics_charts(run):
    diagnostics = run.diagnostics[run.diagnostics["lr"] == 1e-3]
    fig = plots.plot_gradient_norms(diagnostics)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and all(ax.get_yscale() == "log" for ax in visible)
    assert len(visible[0].get_lines()) == 3  # 3 weight layers
    health = plots.plot_unit_health(diagnostics)
    dead, saturated = health.axes
    relu_dead = dict(
        zip([line.get_label() for line in dead.get_lines()], dead.get_lines(), strict=True)
    )  # one line per activation and hidden layer (2 hidden layers)
    assert max(relu_dead["relu, layer 1"].get_ydata()) > 10
    assert max(relu_dead["tanh, layer 2"].get_ydata()) == 0
    assert len(saturated.get_lines()) == 3 * 2

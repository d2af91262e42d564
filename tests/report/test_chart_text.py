"""What the report's charts say in text: tick labels are plain numbers (never mathtext
source such as $\\mathdefault{10^{0}}$), the learning-rate axis names exactly the tested
values, no two tick labels of an axis overlap, and scripts/check_report.py finds all of
this from the report's HTML alone (the text layout each PNG carries)."""

import base64
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.run_dir import write_run
from matplotlib.figure import Figure

from actlab.report import plots
from actlab.report.figure_png import TEXT_LAYOUT_KEY, png_with_text_layout
from actlab.report.render import write_report

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report.py"
_spec = importlib.util.spec_from_file_location("check_report", SCRIPT)
check_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_report)


def _layout(fig: Figure) -> dict:
    png = png_with_text_layout(plots.plain_text(fig), 110)
    return json.loads(check_report.png_text_chunks(png)[TEXT_LAYOUT_KEY])


def _html(*figures: Figure) -> str:
    images = [
        f'<img src="data:image/png;base64,'
        f'{base64.b64encode(png_with_text_layout(plots.plain_text(fig), 110)).decode()}" alt="c">'
        for fig in figures
    ]
    return "<html><head><title>t</title></head><body>" + "".join(images) + "</body></html>"


def _ticks(layout: dict, axis: str) -> list[str]:
    return [t["text"] for t in layout["texts"] if t["tick"] == axis]


def _sensitivity(lrs) -> pd.DataFrame:
    rows = [
        {"activation": a, "lr": lr, "mean": 0.9 + 0.01 * i, "ci_low": 0.88, "ci_high": 0.95, "n": 3}
        for a in ("relu", "tanh")
        for i, lr in enumerate(lrs)
    ]
    return pd.DataFrame(rows)


def _gradient_rows(low: float, high: float) -> pd.DataFrame:
    rows = []
    for activation in ("relu", "tanh", "gelu"):
        for layer in (1, 2, 3):
            for epoch, norm in enumerate(np.geomspace(low, high, 4), start=1):
                rows.append({"activation": activation, "layer": layer, "epoch": epoch,
                             "grad_norm": norm * layer / 3})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("low, high", [(0.2, 1.1), (1e-4, 3.0), (0.02, 0.05)])
def test_gradient_norm_ticks_are_plain_numbers(low, high):
    layout = _layout(plots.plot_gradient_norms(_gradient_rows(low, high)))
    labels = _ticks(layout, "y")
    assert labels, "a log axis without a single tick label"
    for text in labels:
        assert "$" not in text and "mathdefault" not in text, text
        float(text)  # a plain number
    assert check_report.layout_problems(layout) == []


@pytest.mark.parametrize(
    "lrs",
    [
        (1e-3, 3e-3),
        (1e-3, 2e-3, 3e-3),
        (3e-4, 1e-3),
        tuple(np.round(np.geomspace(1e-4, 1e-2, 9), 6)),
    ],
)
def test_the_lr_axis_names_exactly_the_tested_values_without_overlap(lrs):
    layout = _layout(plots.plot_lr_sensitivity(_sensitivity(lrs)))
    assert _ticks(layout, "x") == [plots.tick_number(lr) for lr in sorted(lrs)]
    assert check_report.layout_problems(layout) == []


def test_a_whole_report_passes_the_chart_check(tmp_path):
    run = write_run(tmp_path / "run", lrs=(1e-3, 2e-3, 3e-3), val_size=500, select="val")
    report = write_report(run).read_text()
    assert check_report.figure_problems(report) == []
    depth_run = write_run(tmp_path / "depth", depths=(2, 4, 8), seeds=(0, 1, 2))
    assert check_report.figure_problems(write_report(depth_run).read_text()) == []


def test_the_checker_finds_code_and_overlapping_labels_as_charts_showed_them():
    # The charts before: matplotlib's default log formatters under plain_text().
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([1e-3, 2e-3, 3e-3], [90, 95, 96])
    ax.set_xscale("log")
    problems = check_report.figure_problems(_html(fig))
    text = "\n".join(problems)
    assert "x tick label shows code: '$\\\\mathdefault{2\\\\times10^{-3}}$'" in text
    assert "overlap" in text


def test_a_chart_without_text_layout_cannot_pass():
    fig = Figure()
    fig.subplots().plot([0, 1])
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    html = (
        f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" alt="x">'
    )
    (problem,) = check_report.figure_problems(html)
    assert "carries no text layout" in problem and "chart 1 (x)" in problem


def test_epoch_axes_tick_whole_epochs_only():
    """A 1-epoch run's charts ticked 0.96, 0.98, 1.00, 1.02, 1.04: epochs are integers."""
    rows = _gradient_rows(0.1, 1.0)
    layout = _layout(plots.plot_gradient_norms(rows[rows["epoch"] == rows["epoch"].min()]))
    labels = _ticks(layout, "x")
    assert labels and all(label.lstrip("−-").isdigit() for label in labels), labels

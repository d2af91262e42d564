"""The adversarial kill test: SIGKILL `actlab compare` at many points (inside the CSV
appends, the checkpoint writes, config.json and the report), sometimes with the file being
written cut to half its length first (a crash that lost the page cache's tail), then rerun
the same command. The rerun must finish with exactly the rows of an uninterrupted run
(NaN-aware, wall times aside) and a whole report.

The child is a fork of the test process (no interpreter start, torch already imported), so
the whole sweep stays within a few seconds; the kill points are the N-th call to os.fsync or
os.replace, the two calls every durable write of actlab.study.store goes through.
"""

import os
import signal

import numpy as np
import pandas as pd
import pytest
from fixtures.data import write_npz
from fixtures.kill import durable_calls, quiet_main, rows

from actlab.report import render as report
from actlab.study import store

pytestmark = pytest.mark.usefixtures("one_thread")

# How many kill points the sweep visits (spread evenly over all of them).
KILL_POINTS = int(os.environ.get("ACTLAB_KILL_POINTS", "10"))


def command(data: str, out) -> list[str]:
    return ["compare", "--threads", "1", "--quiet", "--dataset", data, "--epochs", "3",
            "--hidden", "8", "--activations", "relu,tanh", "--seeds", "2", "--out", str(out)]  # fmt: skip


@pytest.fixture(autouse=True)
def no_charts(monkeypatch):
    """Charts take seconds to draw and are not what is tested here; the report's text and
    its atomic write are."""
    monkeypatch.setattr(report, "charts", lambda analysis: [])
    monkeypatch.setattr(report, "_activation_figure", lambda analysis: None)


def test_sigkill_anywhere_then_rerun_gives_the_rows_of_an_uninterrupted_run(tmp_path):
    data = write_npz(tmp_path / "data.npz", 192, 64)
    reference = tmp_path / "reference"
    total = durable_calls(command(data, reference))
    assert total > 20  # config, CSV headers, 3 epochs of appends and checkpoints, report
    expected = {
        name: rows(reference, name) for name in (store.METRICS_FILE, store.DIAGNOSTICS_FILE)
    }

    points = sorted({int(p) for p in np.linspace(1, total, KILL_POINTS).round()})
    for number, kill_at in enumerate(points):
        run = tmp_path / f"killed-{kill_at}"
        truncate = number % 2 == 1
        assert durable_calls(command(data, run), kill_at, truncate) == signal.SIGKILL
        assert quiet_main(command(data, run)) == 0, f"rerun after a kill at call {kill_at}"
        for name, frame in expected.items():
            pd.testing.assert_frame_equal(rows(run, name), frame, check_exact=True)
        html = (run / "report.html").read_text(encoding="utf-8")
        assert html.rstrip().endswith("</html>")
        assert (run / "report.md").read_text(encoding="utf-8").startswith(report.MARKDOWN_MARK)
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_report_killed_while_written_leaves_the_previous_one_whole(tmp_path):
    data = write_npz(tmp_path / "data.npz", 128, 32)
    run = tmp_path / "run"
    assert quiet_main([*command(data, run), "--epochs", "1"]) == 0
    before = (run / "report.html").read_bytes()
    calls = durable_calls(["report", str(run)])  # html: fsync, replace, dir fsync; md: same
    for kill_at in range(1, calls + 1):
        assert durable_calls(["report", str(run)], kill_at, truncate=True) == signal.SIGKILL
        assert (run / "report.html").read_bytes() == before  # old or new, never partial
    assert calls == 6

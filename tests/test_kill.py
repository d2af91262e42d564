"""The adversarial kill test: SIGKILL `actlab compare` at many points (inside the CSV
appends, the checkpoint writes, config.json and the report), sometimes with the file being
written cut to half its length first (a crash that lost the page cache's tail), then rerun
the same command. The rerun must finish with exactly the rows of an uninterrupted run
(NaN-aware, wall times aside) and a whole report.

The child is a fork of the test process (no interpreter start, torch already imported), so
the whole sweep stays within a few seconds; the kill points are the N-th call to os.fsync or
os.replace, the two calls every durable write of actlab.study.store goes through.
"""

import contextlib
import io
import os
import signal
import stat

import numpy as np
import pandas as pd
import pytest
from fixtures.data import write_npz

from actlab.cli.main import main
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


def quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def durable_calls(argv: list[str], kill_at: int | None = None, truncate: bool = False) -> int:
    """Run `argv` counting os.fsync/os.replace calls; with `kill_at`, in a forked child that
    SIGKILLs itself at that call (after cutting the file being fsynced to half when
    `truncate`). Returns the number of calls (a full run) or the child's signal number."""
    calls = 0
    real_fsync, real_replace = os.fsync, os.replace

    def point(fd: int | None = None) -> None:
        nonlocal calls
        calls += 1
        if calls == kill_at:
            if truncate and fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    def fsync(fd: int) -> None:
        point(fd)
        real_fsync(fd)

    def replace(src, dst) -> None:
        point()
        real_replace(src, dst)

    if kill_at is None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "fsync", fsync)
            patch.setattr(os, "replace", replace)
            assert quiet_main(argv) == 0
        return calls
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.fsync, os.replace = fsync, replace
            code = 100 + quiet_main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def rows(path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(path / name, dtype={"activation": str, "status": str})
    return frame.drop(columns=["epoch_time_s"], errors="ignore")


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

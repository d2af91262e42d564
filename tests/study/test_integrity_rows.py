"""Rows lost for good (issue 11): metrics.csv truncated, emptied or deleted is restored from
the copy of the rows each checkpoint holds, a contradicting row is refused, and no write
leaves a partial file or a stray temp file behind (a full disk included)."""

import errno
import os

import pandas as pd
import pytest
from fixtures.cli import run_cli
from fixtures.data import write_npz

from actlab.study import store

pytestmark = pytest.mark.usefixtures("one_thread", "no_charts")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", 128, 32)


def compare(data: str, out, *extra: str) -> tuple[int, str, str]:
    return run_cli("compare", "--threads", "1", "--quiet", "--no-report", "--dataset", data,
                   "--epochs", "3", "--hidden", "8", "--activations", "relu,tanh", "--seeds", "1",
                   "--out", str(out), *extra)  # fmt: skip


def rows(run) -> pd.DataFrame:
    frame = pd.read_csv(run / store.METRICS_FILE, dtype={"activation": str, "status": str})
    return frame.drop(columns=["epoch_time_s"])


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    assert compare(data, run)[0] == 0
    return rows(run)


def interrupted(data: str, run, after_epoch: int) -> None:
    from actlab.config import ExperimentConfig
    from actlab.study.driver import load_study_dataset, run_study

    config = ExperimentConfig(seeds=(0,), dataset=data, activations=("relu", "tanh"), epochs=3,
                              hidden=(8,), threads=1)  # fmt: skip

    def stop(result) -> None:
        if result.epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, out=run, dataset=load_study_dataset(config), on_epoch=stop)


def test_a_finished_run_that_lost_its_last_row_gets_it_back(data, reference, tmp_path):
    run = tmp_path / "run"
    assert compare(data, run)[0] == 0
    lines = (run / store.METRICS_FILE).read_text().splitlines(keepends=True)
    (run / store.METRICS_FILE).write_text("".join(lines[:-1]))
    code, out, err = compare(data, run)
    assert code == 0 and "already complete" in out
    assert "1 row(s) of complete epochs were missing" in err and "restored them" in err
    pd.testing.assert_frame_equal(rows(run), reference)


@pytest.mark.parametrize(
    "damage", ["truncated", "emptied", "deleted", "header only", "cut mid-row"]
)
def test_an_unfinished_run_with_a_damaged_metrics_csv_resumes_without_losing_epochs(
    data, reference, tmp_path, damage
):
    run = tmp_path / "run"
    interrupted(data, run, after_epoch=2)
    file = run / store.METRICS_FILE
    text = file.read_text()
    if damage == "truncated":
        file.write_text("".join(text.splitlines(keepends=True)[:3]))
    elif damage == "emptied":
        file.write_text("")
    elif damage == "deleted":
        file.unlink()
    elif damage == "header only":
        file.write_text(text.splitlines(keepends=True)[0])
    else:
        file.write_text(text[: len(text) - 20])
    code, _, err = compare(data, run)
    assert code == 0
    assert "restored them from the copy in checkpoint.pt" in err
    pd.testing.assert_frame_equal(rows(run), reference)
    assert len(store.read_run(run).metrics) == 2 * 3


def test_a_metrics_row_that_contradicts_the_checkpoint_is_refused(data, tmp_path):
    run = tmp_path / "run"
    interrupted(data, run, after_epoch=2)
    file = run / store.METRICS_FILE
    edited = file.read_text().replace(",relu,", ",gelu,", 1)
    file.write_text(edited)
    code, _, err = compare(data, run)
    assert code == 2 and err.count("\n") == 1
    assert "row 1 differs from the copy of that row in checkpoint.pt" in err
    assert "delete it to have it rewritten" in err
    assert file.read_text() == edited  # nothing rewritten


def test_rows_beyond_the_checkpoint_are_dropped_with_a_note(data, reference, tmp_path):
    run = tmp_path / "run"
    interrupted(data, run, after_epoch=2)
    extra = (run / store.METRICS_FILE).read_text().splitlines(keepends=True)[-2:]
    with (run / store.METRICS_FILE).open("a") as handle:  # a crash after the append of epoch 3
        handle.write("".join(line.replace(",2,", ",3,") for line in extra))
    code, _, err = compare(data, run)
    assert code == 0 and "dropped 2 row(s) beyond the checkpoint (epoch 2)" in err
    pd.testing.assert_frame_equal(rows(run), reference)


def test_a_full_disk_in_the_checkpoint_leaves_no_temp_file_and_one_line(
    data, tmp_path, monkeypatch
):
    import torch

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"x" * 1000)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    code, _, err = compare(data, run)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        f"actlab: error: {run / 'checkpoint.pt'}: No space left on device; free some disk space"
    )
    assert not list(run.glob("*.tmp")) and not (run / "checkpoint.pt").exists()


def test_a_full_disk_in_the_report_keeps_the_previous_report(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert compare(data, run, "--epochs", "1")[0] == 0
    assert run_cli("report", str(run))[0] == 0
    before = (run / "report.html").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 0 and not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run_cli("report", str(run))
    assert code == 1 and "No space left on device" in err and err.count("\n") == 1
    assert (run / "report.html").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_appending_rows_is_one_line_and_the_rerun_completes(
    data, reference, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    interrupted(data, run, after_epoch=1)
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(store.METRICS_FILE):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full)
        code, _, err = compare(data, run)
    assert code == 1 and err == (
        f"actlab: error: {run / store.METRICS_FILE}: No space left on device; free some disk "
        "space or choose another location; a study resumes from its last complete epoch\n"
    )
    code, _, err = compare(data, run)  # space again: the unsynced rows are dropped, retrained
    assert code == 0
    pd.testing.assert_frame_equal(rows(run), reference)


def test_a_checkpoint_from_before_rows_were_kept_still_reopens(tmp_path):
    """Checkpoints written before this version have no "rows": reopening keeps the rows the
    checkpoint covers and drops the rest, as before."""
    import torch

    from actlab.config import ExperimentConfig

    config = ExperimentConfig(seeds=(0,), dataset="generated", activations=("relu",), epochs=3)
    run = tmp_path / "run"

    def open_dir():
        return store.open_run_dir(run, config, members=[], dataset={}, environment={})

    def row(epoch):
        return {"member": 0, "activation": "relu", "seed": 0, "lr": 1e-3, "epoch": epoch,
                "test_acc": 0.5, "status": "ok"}  # fmt: skip

    with open_dir() as writer:
        writer.append_rows([row(1)])
        writer.append_rows([row(2)])
    torch.save({"schema": 1, "depth_index": 0, "epoch": 1, "engine": {}}, run / "checkpoint.pt")
    with open_dir() as writer:
        assert writer.records[store.METRICS_FILE] == [store._record(row(1), store.METRICS_COLUMNS)]
        assert writer.notes == [
            "metrics.csv: dropped 1 row(s) beyond the checkpoint (epoch 1); those epochs are trained again"
        ]
    assert list(store.read_run(run).metrics["epoch"]) == [1]

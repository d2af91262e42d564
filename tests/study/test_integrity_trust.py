"""What actlab trusts in a run directory (issue 25, the run directory's part): a checkpoint
carries its study's identity and is refused elsewhere; every file is checked before one is
repaired; `actlab report` applies compare's checks read-only; a report written while the
study trains never replaces the study's own; reopening a study removes its stale reports;
writers never share a temp file; a finished run leaves no run.lock."""

import fcntl
import json
import os
import shutil

import pytest
from fixtures.cli import run_cli
from fixtures.data import write_npz

from actlab.config import ExperimentConfig
from actlab.study import store
from actlab.study.driver import load_study_dataset, run_study

pytestmark = pytest.mark.usefixtures("one_thread", "no_charts")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", 96, 32)


def compare(data: str, out, *extra: str) -> tuple[int, str, str]:
    return run_cli("compare", "--threads", "1", "--quiet", "--no-report", "--dataset", data,
                   "--epochs", "2", "--hidden", "8", "--activations", "relu,tanh",
                   "--out", str(out), *extra)  # fmt: skip


def one_line(code: int, err: str, *words: str) -> None:
    """Exit 2 and one error line (after any notes of repairs), no traceback."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if not line.startswith("actlab: note: ")]
    assert len(errors) == 1 and errors[0].startswith("actlab: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run (2 seeds) and one of the same study with 3 seeds."""
    root = tmp_path_factory.mktemp("runs")
    assert compare(data, root / "two", "--seeds", "2")[0] == 0
    assert compare(data, root / "three", "--seeds", "3")[0] == 0
    return root


def copy(finished, name: str, tmp_path):
    return shutil.copytree(finished / name, tmp_path / name)


# --- 1. another study's checkpoint --------------------------------------------------------


def test_the_checkpoint_of_another_study_is_refused_and_nothing_is_rewritten(
    data, finished, tmp_path
):
    run = copy(finished, "two", tmp_path)
    shutil.copy(finished / "three" / store.CHECKPOINT_FILE, run / store.CHECKPOINT_FILE)
    (run / store.METRICS_FILE).unlink()  # actlab's own advice for a contradicting row
    code, _, err = compare(data, run, "--seeds", "2")
    one_line(code, err, "checkpoint.pt belongs to another study", "seeds 0, 1, 2 there, 0, 1 here")
    assert not (run / store.METRICS_FILE).exists()  # nothing restored from a foreign copy
    code, _, err = run_cli("report", run)
    one_line(code, err, "belongs to another study")


def test_every_file_is_checked_before_any_is_repaired(data, finished, tmp_path):
    run = copy(finished, "two", tmp_path)
    metrics = run / store.METRICS_FILE
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:-1]))  # lost its last row: would be restored
    diagnostics = run / store.DIAGNOSTICS_FILE
    text = diagnostics.read_text().splitlines(keepends=True)
    fields = text[1].split(",")
    fields[7] = "123.0"  # a grad_norm that contradicts the checkpoint's copy
    diagnostics.write_text("".join([text[0], ",".join(fields), *text[2:]]))
    before = metrics.read_bytes()
    code, _, err = compare(data, run, "--seeds", "2")
    one_line(code, err, "diagnostics.csv: row 1 differs")
    assert metrics.read_bytes() == before  # the refusal came before any repair


def test_a_checkpoint_with_a_malformed_engine_block_is_one_line(data, finished, tmp_path):
    import torch

    run = copy(finished, "two", tmp_path)
    checkpoint = torch.load(run / store.CHECKPOINT_FILE, weights_only=True)
    checkpoint["epoch"] = checkpoint["engine"]["epoch"] = 1  # so that training continues
    checkpoint["engine"]["model"] = {"nonsense": torch.zeros(1)}
    checkpoint["rows"] = {k: [r for r in v if r[5] == "1"] for k, v in checkpoint["rows"].items()}
    torch.save(checkpoint, run / store.CHECKPOINT_FILE)
    code, _, err = compare(data, run, "--seeds", "2")
    one_line(code, err, "engine state does not fit", "delete checkpoint.pt")
    checkpoint["engine"] = ["not", "a", "dict"]
    torch.save(checkpoint, run / store.CHECKPOINT_FILE)
    one_line(*compare(data, run, "--seeds", "2")[::2], "malformed engine state")


def test_an_old_checkpoint_without_identity_stays_readable(data, finished, tmp_path):
    import torch

    run = copy(finished, "two", tmp_path)
    checkpoint = torch.load(run / store.CHECKPOINT_FILE, weights_only=True)
    del checkpoint["identity"]
    checkpoint["schema"] = 1
    torch.save(checkpoint, run / store.CHECKPOINT_FILE)
    code, out, _ = compare(data, run, "--seeds", "2")
    assert code == 0 and "already complete" in out
    assert run_cli("report", run)[0] == 0


# --- 2. report applies compare's checks ------------------------------------------------------


def edit_metrics(run, change) -> None:
    path = run / store.METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(change(lines)))


def changed_accuracy(lines):
    fields = lines[2].split(",")
    fields[11] = "0.999"
    return [*lines[:2], ",".join(fields), *lines[3:]]


@pytest.mark.parametrize(
    "change, words",
    [
        (changed_accuracy, ["metrics.csv: row 2 differs from the copy"]),
        (lambda lines: [*lines, lines[-1]], ["differs from the copy"]),
    ],
    ids=["changed test accuracy", "duplicated last row"],
)
def test_report_refuses_what_compare_refuses(finished, tmp_path, change, words):
    run = copy(finished, "two", tmp_path)
    edit_metrics(run, change)
    one_line(*run_cli("report", run)[::2], *words)
    assert not (run / "report.html").exists()


def test_report_without_members_block_and_a_member_deleted_is_not_final(finished, tmp_path):
    run = copy(finished, "two", tmp_path)
    document = json.loads((run / store.CONFIG_FILE).read_text())
    del document["members"]
    (run / store.CONFIG_FILE).write_text(json.dumps(document))
    edit_metrics(run, lambda lines: [ln for ln in lines if ",tanh,1," not in ln])
    code, _, err = run_cli("report", run)
    one_line(code, err, "row", "checkpoint.pt")
    (run / store.CHECKPOINT_FILE).unlink()  # no copy to compare with: still not final
    code, _, err = run_cli("report", run)
    assert code == 0 and "no members block" in err and "unfinished" in err, err
    assert "unfinished" in (run / "report.md").read_text()


def test_report_on_a_member_without_activation_is_one_line(finished, tmp_path):
    run = copy(finished, "two", tmp_path)
    document = json.loads((run / store.CONFIG_FILE).read_text())
    del document["members"][1]["activation"]
    (run / store.CONFIG_FILE).write_text(json.dumps(document))
    one_line(
        *run_cli("report", run)[::2], "member 2 of the members block has no valid 'activation'"
    )


@pytest.mark.parametrize("state", ["deleted", "empty", "header only"])
def test_report_without_rows_is_one_line_or_an_unfinished_report(finished, tmp_path, state):
    run = copy(finished, "two", tmp_path)
    metrics = run / store.METRICS_FILE
    if state == "deleted":
        metrics.unlink()
    else:
        metrics.write_text("" if state == "empty" else ",".join(store.METRICS_COLUMNS) + "\n")
    code, _, err = run_cli("report", run)
    assert "Traceback" not in err
    assert code == 2 and err.count("\n") == 1 and "rerun the same `actlab compare`" in err, err
    (run / store.CHECKPOINT_FILE).unlink()  # no copy of the rows to restore them from
    one_line(*run_cli("report", run)[::2], "holds no metrics row", "rerun the same")


# --- 3. a report while the study trains ----------------------------------------------------


def test_a_report_of_a_locked_run_never_replaces_the_owners_report(finished, tmp_path):
    run = copy(finished, "two", tmp_path)
    assert run_cli("report", run)[0] == 0
    own = (run / "report.html").read_bytes(), (run / "report.md").read_bytes()
    with open(run / store.LOCK_FILE, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        code, out, err = run_cli("report", run)
    assert code == 0 and "report.unfinished.html" in out and "pid 4242" in err, err
    assert ((run / "report.html").read_bytes(), (run / "report.md").read_bytes()) == own
    assert (run / "report.unfinished.md").exists()
    assert run_cli("report", run)[0] == 0  # the owner's report: the outdated one goes
    assert not (run / "report.unfinished.html").exists()


def test_two_writers_of_one_file_never_share_a_temp_file(tmp_path):
    target = tmp_path / "report.html"

    def slow_writer(handle) -> None:
        handle.write(b"first")
        store.write_text_atomic(target, "second")  # another writer, mid-write

    store._replace_atomic(target, slow_writer)  # a shared temp name: FileNotFoundError
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "config.json"
    dead = tmp_path / ".config.json.999999999.abc.tmp"
    live = tmp_path / f".config.json.{os.getppid()}.abc.tmp"
    dead.write_text("x")
    live.write_text("x")
    store.write_text_atomic(target, "{}")
    assert not dead.exists() and live.exists()


# --- 4. reopening invalidates reports ------------------------------------------------------


def test_an_interrupted_extension_leaves_no_stale_final_report(data, finished, tmp_path):
    run = copy(finished, "two", tmp_path)
    assert run_cli("report", run)[0] == 0
    config = ExperimentConfig(dataset=data, activations=("relu", "tanh"), seeds=(0, 1),
                              epochs=4, hidden=(8,), threads=1)  # fmt: skip
    notes = []

    def stop(result) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, out=run, dataset=load_study_dataset(config), on_epoch=stop,
                  on_note=notes.append)  # fmt: skip
    assert not (run / "report.html").exists() and not (run / "report.md").exists()
    assert any("removed report.html, report.md" in n for n in notes)
    code, _, err = run_cli("report", run)
    assert code == 0 and "unfinished: epoch 3 of 4" in (run / "report.md").read_text()


def test_a_finished_run_rerun_keeps_its_report(data, finished, tmp_path):
    run = copy(finished, "two", tmp_path)
    assert run_cli("report", run)[0] == 0
    before = (run / "report.md").read_bytes()
    assert compare(data, run, "--seeds", "2")[0] == 0  # already complete
    assert (run / "report.md").read_bytes() == before


# --- run.lock ------------------------------------------------------------------------------


def test_a_finished_run_leaves_no_lock_and_a_stale_lock_is_taken_over(data, finished, tmp_path):
    assert not (finished / "two" / store.LOCK_FILE).exists()
    run = copy(finished, "two", tmp_path)
    (run / store.LOCK_FILE).write_text("4242\n")  # a killed run's: no flock held
    code, out, _ = compare(data, run, "--seeds", "2")
    assert code == 0 and "already complete" in out
    assert not (run / store.LOCK_FILE).exists()

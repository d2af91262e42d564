"""`actlab compare` end to end on small generated data (npz), plus one real-data run."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures.data import write_npz
from fixtures.run_dir import metric_rows

import actlab
from actlab.cli.main import default_out, main, parse_seeds, split_specs
from actlab.config import ExperimentConfig
from actlab.study import store
from actlab.study.driver import run_study

FASHION = Path("/usr/share/datasets/fashion-mnist")


pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "small.npz", 512, 128)


def compare(*args: str) -> int:
    # one seed unless a test asks for more (the command's default is 10)
    return main(["compare", "--threads", "1", "--no-report", "--seeds", "1", *args])


def test_compare_prints_tutorial_lines_and_summary_and_writes_the_run(small, tmp_path, capsys):
    run = tmp_path / "run"
    code = compare("--dataset", small, "--epochs", "2", "--hidden", "16", "--seeds", "2",
                   "--activations", "relu,tanh", "--out", str(run))  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    # The thread count, the step's kernels and the estimate come first.
    first, second, third = out.splitlines()[:3]
    assert first.startswith("threads: 1 (--threads;") and third.startswith("estimate: ")
    assert second.startswith("step kernels: compiled (") or second.startswith("step kernels: torch")
    # Then one progress line per epoch (members' lines only with --verbose), the summary.
    assert out.splitlines()[3].startswith("progress: 1/2 epochs (50% of the steps)")
    assert out.splitlines()[4].startswith("progress: 2/2 epochs (100% of the steps)")
    assert "seed 0  epoch" not in out
    assert "final test acc %" in out and "95% CI" in out and "verdict:" in out
    rows = metric_rows(run)
    assert len(rows) == 2 * 2 * 2  # activations x seeds x epochs
    assert {(r["activation"], r["seed"]) for r in rows} == {
        (a, s) for a in ("relu", "tanh") for s in ("0", "1")
    }
    data = store.read_run(run)
    assert data.config.hidden == (16,) and data.environment["threads"] == 1
    assert len(data.diagnostics) == 8 * 2  # two weight layers per member per epoch

    # The same command again: already complete, nothing trained, exit 0.
    code = compare("--dataset", small, "--epochs", "2", "--hidden", "16", "--seeds", "2",
                   "--activations", "relu,tanh", "--out", str(run))  # fmt: skip
    assert code == 0 and "already complete" in capsys.readouterr().out
    assert len(metric_rows(run)) == 8


def test_same_command_twice_gives_identical_metrics(small, tmp_path):
    for name in ("a", "b"):
        assert compare("--dataset", small, "--epochs", "2", "--hidden", "16,8", "--quiet",
                       "--activations", "relu,sigmoid", "--out", str(tmp_path / name)) == 0  # fmt: skip
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")


def test_learning_rates_and_depths_are_member_dimensions(small, tmp_path):
    run = tmp_path / "run"
    code = compare("--dataset", small, "--epochs", "1", "--hidden", "8", "--depths", "1,3",
                   "--lr", "1e-3,3e-3", "--activations", "relu,tanh", "--quiet", "--out", str(run))  # fmt: skip
    assert code == 0
    rows = metric_rows(run)
    assert {(r["depth"], r["activation"], float(r["lr"])) for r in rows} == {
        (d, a, lr) for d in ("1", "3") for a in ("relu", "tanh") for lr in (1e-3, 3e-3)
    }
    layers = {
        row["depth"]: row["layer"] for row in csv.DictReader((run / "diagnostics.csv").open())
    }
    assert layers == {"1": "2", "3": "4"}  # the last layer index per depth: depth + 1


def test_divergence_is_recorded_the_others_finish_and_exit_code_is_3(tmp_path, capsys):
    data = write_npz(tmp_path / "mid.npz", 1024, 256, side=28)
    run = tmp_path / "run"
    code = compare("--dataset", data, "--epochs", "3", "--hidden", "32,32", "--lr", "1e-3,10",
                   "--activations", "relu,sigmoid", "--out", str(run))  # fmt: skip
    assert code == 3
    out = capsys.readouterr().out
    assert "diverged" in out
    rows = metric_rows(run)
    diverged = [r for r in rows if r["status"] == "diverged"]
    assert diverged and all(float(r["lr"]) == 10 and r["train_loss"] == "" for r in diverged)
    for row in diverged:  # no rows after the divergence
        later = [r for r in rows if r["member"] == row["member"] and r["epoch"] > row["epoch"]]
        assert not later
    finished = {
        (r["activation"], r["lr"]) for r in rows if r["epoch"] == "3" and r["status"] == "ok"
    }
    assert {("relu", "0.001"), ("sigmoid", "0.001")} <= finished
    # Rerunning the finished study trains nothing and still says that members diverged.
    code = compare("--dataset", data, "--epochs", "3", "--hidden", "32,32", "--lr", "1e-3,10",
                   "--activations", "relu,sigmoid", "--out", str(run))  # fmt: skip
    assert code == 3 and "already complete" in capsys.readouterr().out


def test_a_second_process_is_refused_with_one_line(small, tmp_path, capsys):
    run = tmp_path / "run"
    config = ExperimentConfig(seeds=(0,), dataset=small, epochs=1, hidden=(8,), threads=1)
    writer = store.open_run_dir(run, config, members=[], dataset={}, environment={})
    try:
        code = compare("--dataset", small, "--epochs", "1", "--hidden", "8", "--out", str(run))
    finally:
        writer.close()
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"actlab: error: run directory {run} is in use by another actlab process "
        f"(pid {os.getpid()}); wait for it to finish or choose another --out"
    )


def test_user_mistakes_are_one_line_errors(small, tmp_path, capsys):
    assert compare("--dataset", small, "--lr", "fast", "--out", str(tmp_path / "r")) == 2
    assert compare("--dataset", small, "--resume", "--out", str(tmp_path / "none")) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("actlab: error: ") for line in errors)
    assert "--lr 'fast'" in errors[0] and "nothing to resume" in errors[1]


def test_parsing_helpers():
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("0,5,7") == (0, 5, 7)
    assert parse_seeds("7,") == (7,)
    assert split_specs("relu,elu(alpha=0.5),expr:max(x, 0),leaky_relu") == (
        "relu", "elu(alpha=0.5)", "expr:max(x, 0)", "leaky_relu"
    )  # fmt: skip
    assert default_out("fashion-mnist") == "runs/compare-fashion-mnist"
    assert default_out("npz:/data/my set.npz") == "runs/compare-npz-my-set"


def test_python_api_returns_the_metrics_frame(small, tmp_path):
    frame = actlab.compare(dataset=small, epochs=1, hidden=[8], seeds=2, threads=1,
                           activations=["relu", "tanh"], diagnostics=False)  # fmt: skip
    assert list(frame.columns) == list(store.METRICS_COLUMNS)
    assert len(frame) == 4 and set(frame["seed"]) == {0, 1}
    written = actlab.compare(dataset=small, epochs=1, hidden=[8], seeds=2, threads=1,
                             activations=["relu", "tanh"], diagnostics=False, out=tmp_path / "r")  # fmt: skip
    columns = ["activation", "seed", "train_loss", "test_acc"]
    assert written[columns].reset_index(drop=True).equals(frame[columns].reset_index(drop=True))


@pytest.mark.slow
def test_sigkill_in_epoch_3_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    data = write_npz(tmp_path / "big.npz", 6000, 200, side=28)
    # On the CPU: the kill is timed, and a GPU's epochs are too short to land in epoch 3.
    options = ["--dataset", data, "--epochs", "4", "--hidden", "64,64", "--batch-size", "32",
               "--activations", "relu,tanh", "--threads", "1", "--no-report", "--quiet",
               "--device", "cpu", "--seeds", "1"]  # fmt: skip
    reference = tmp_path / "reference"
    config = ExperimentConfig(seeds=(0,), dataset=data, epochs=4, hidden=(64, 64), batch_size=32,
                              activations=("relu", "tanh"), threads=1, device="cpu")  # fmt: skip
    run_study(config, out=reference)

    run = tmp_path / "run"
    command = [sys.executable, "-m", "actlab", "compare", *options, "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    epoch_time = None
    while time.monotonic() < deadline and process.poll() is None:
        rows = metric_rows(run) if (run / store.METRICS_FILE).exists() else []
        if any(r["epoch"] == "2" for r in rows):
            with (run / store.METRICS_FILE).open() as handle:
                epoch_time = float(list(csv.DictReader(handle))[-1]["epoch_time_s"])
            break
        time.sleep(0.05)
    assert epoch_time is not None, "the run did not reach epoch 2"
    time.sleep(epoch_time * 0.4)  # into epoch 3
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    checkpoint = torch.load(run / store.CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 2, "killed outside epoch 3"
    assert max(int(r["epoch"]) for r in metric_rows(run)) <= 3

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stdout  # --quiet
    rows = metric_rows(run)
    keys = [(r["member"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * 2
    assert rows == metric_rows(reference)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_one_epoch_and_divergence_at_lr_10(tmp_path, capsys):
    run = tmp_path / "fashion"
    code = compare("--dataset", "fashion-mnist", "--epochs", "1", "--limit-train", "10000",
                   "--quiet", "--out", str(run))  # fmt: skip
    assert code == 0
    rows = metric_rows(run)
    assert len(rows) == 4 and all(float(r["test_acc"]) > 0.6 for r in rows)
    code = compare("--dataset", "fashion-mnist", "--epochs", "1", "--limit-train", "3000",
                   "--lr", "1e-3,10", "--activations", "sigmoid,relu", "--quiet",
                   "--out", str(tmp_path / "diverge"))  # fmt: skip
    assert code == 3
    rows = metric_rows(tmp_path / "diverge")
    status = {(r["activation"], float(r["lr"])): r["status"] for r in rows}
    assert status[("sigmoid", 10.0)] == "diverged" and status[("sigmoid", 1e-3)] == "ok"
    assert status[("relu", 1e-3)] == "ok"


@pytest.mark.parametrize("stop_at", [(1, 1), (1, 2), (3, 1)])
def test_depth_study_resumes_per_depth_after_an_interruption(small, tmp_path, stop_at):
    config = ExperimentConfig(seeds=(0,), dataset=small, epochs=2, hidden=(8,), depths=(1, 3),
                              activations=("relu", "tanh"), threads=1)  # fmt: skip
    run_study(config, out=tmp_path / "reference")

    def interrupt(result):
        if (result.depth, result.epoch) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, out=tmp_path / "run", on_epoch=interrupt)
    result = run_study(config, out=tmp_path / "run")
    assert result.resumed_from == stop_at and not result.already_complete
    assert metric_rows(tmp_path / "run") == metric_rows(tmp_path / "reference")
    assert run_study(config, out=tmp_path / "run").already_complete

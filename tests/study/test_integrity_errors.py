"""One line, never a traceback (issue 11): every failure a user or the machine can cause ends
in one line on stderr naming the input and the way out, exit 2 for bad input and 1 for
the environment (disk, permissions, paths), with nothing lost."""

import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.cli import run_cli
from fixtures.data import write_npz
from fixtures.run_dir import write_run

from actlab.cli.main import main
from actlab.report import page
from actlab.report import render as report
from actlab.study import store

pytestmark = pytest.mark.usefixtures("one_thread", "no_charts")


def one_line(code: int, err: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, err
    assert err.startswith("actlab: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", 64, 16)


def compare(data: str, *extra) -> tuple[int, str, str]:
    return run_cli("compare", "--threads", "1", "--quiet", "--no-report", "--dataset", data,
                   "--epochs", "1", "--hidden", "4", "--seeds", "1", *extra)  # fmt: skip


# --- values where they enter --------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--threads", "0"], ["--threads must be between 1 and"]),
        (["--seeds", "100000000"], ["--seeds 100000000: give a count from 1 to 100000"]),
        (["--hidden", "100000000000"], ["this study needs at least", "GiB of memory", "free"]),
        (["--batch-size", "0"], ["--batch-size must be at least 1"]),
        (["--device", "mps"], ["device 'mps' is not supported"]),
        (["--device", "meta"], ["device 'meta' is not supported"]),
        (["--device", "nonsense"], ["unknown device 'nonsense'"]),
        (["--activations", "RELU,relu"], ["'RELU' and 'relu' are the same activation (relu)"]),
        (["--activations", "leaky_relu,LeakyReLU(negative_slope=0.01)"], ["same activation"]),
        (["--activations", "expr:1"], ["it does not use x, so it is a constant"]),
        (["--activations", "expr:pi"], ["it does not use x"]),
        (["--activations", "expr:x*" + "9" * 400], ["too large for a float"]),
        (["--activations", "prelu(num_parameters=7)"], ["does not fit a layer of 4 units"]),
        (["--lr", "nan"], ["learning rates must be positive finite numbers"]),
        (["--lr", "inf"], ["learning rates must be positive finite numbers"]),
        (["--optimizer", "sgd", "--momentum", "inf"], ["must be finite numbers"]),
        # issue 25: accepted before, with wrong or endless results
        (["--depths", "2,2"], ["duplicate depths in [2, 2]"]),
        (["--epochs", "99999999999999999999"], ["--epochs must be from 1 to 1000000"]),
        (["--activations", "expr:x,expr:(x)"], ["'expr:x' and 'expr:(x)' are the same activation"]),
        (["--activations", "elu(alpha=1e308)"], ["alpha=1e+308 is outside the float32 range"]),
    ],
)
def test_bad_values_are_one_line(data, tmp_path, extra, words):
    code, _, err = compare(data, "--out", tmp_path / "run", *extra)
    one_line(code, err, 2, *words)
    assert not (tmp_path / "run" / store.CHECKPOINT_FILE).exists()


def test_bench_size_beyond_memory_is_one_line(tmp_path):
    code, _, err = run_cli("bench", "relu", "--size", 10**13, "-o", tmp_path / "b.csv")
    one_line(code, err, 2, "--size 10000000000000 needs at least", "choose a smaller size")


def test_plot_labels_are_text_not_mathtext(tmp_path):
    from actlab.report.plots import plot_activations, save_figure

    figure = plot_activations(["relu"], (-1.0, 1.0), (0,))
    figure.axes[0].set_title(r"$\undefined^^$")  # what a name with '$' would do
    assert save_figure(figure, tmp_path / "p.png").stat().st_size > 0


# --- malformed data -----------------------------------------------------------------------


def npz_with_absurd_header(path: Path) -> None:
    """An npz whose x_train.npy header claims 10**12 rows: numpy would try to allocate it."""
    write_npz(path, 16, 8)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000, 4, 4), }"
    header += b" " * (117 - len(header)) + b"\n"
    members["x_train.npy"] = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def write_labels(path: Path, y: np.ndarray, n: int = 32) -> str:
    x = np.zeros((n, 4, 4), np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=np.zeros(8, np.int64))
    return f"npz:{path}"


def idx_dir_with_overflowing_header(folder: Path) -> str:
    """IDX images whose four dimensions multiply to 2**64: an int64 product wraps to 0."""
    from actlab.data.idx import write_idx

    folder.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.zeros(4, np.uint8))
        header = bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header)
    return f"idx:{folder}"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: (p.write_text("not a zip"), f"npz:{p}")[1], ["not a readable .npz file"]),
        (
            lambda p: (
                np.save(p.with_suffix(".npy"), np.zeros(3)),
                p.with_suffix(".npy").rename(p),
                f"npz:{p}",
            )[2],
            ["not a zip archive"],
        ),  # fmt: skip
        (
            lambda p: (npz_with_absurd_header(p), f"npz:{p}")[1],
            ["claims shape (1000000000000, 4, 4)"],
        ),
        (
            lambda p: write_labels(p, np.full(32, 2**63 + 5, np.uint64)),
            ["label 9223372036854775813"],
        ),
        (lambda p: write_labels(p, np.arange(32) * 10**9), ["labels are class indices"]),
        (
            lambda p: (
                np.savez(
                    p,
                    x_train=np.zeros((8, 0)),
                    y_train=np.zeros(8, int),
                    x_test=np.zeros((4, 0)),
                    y_test=np.zeros(4, int),
                ),
                f"npz:{p}",
            )[1],
            ["with no values"],
        ),  # fmt: skip
        (lambda p: idx_dir_with_overflowing_header(p.with_suffix("")), ["truncated IDX file"]),
    ],
    ids=[
        "text",
        "npy",
        "absurd-header",
        "uint64-labels",
        "huge-labels",
        "zero-width",
        "idx-overflow",
    ],
)
def test_malformed_data_is_one_line(tmp_path, make, words):
    spec = make(tmp_path / "bad.npz")
    code, _, err = run_cli("compare", "--no-report", "--seeds", "1", "--dataset", spec,
                           "--out", tmp_path / "run")  # fmt: skip
    one_line(code, err, 2, *words)


# --- the environment: one OSError handler at the CLI edge -----------------------------------


def test_an_output_under_a_file_or_in_proc_is_one_line(data, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = compare(data, "--out", tmp_path / "file" / "run")
    one_line(code, err, 1, "Not a directory", "choose another path")
    code, _, err = compare(data, "--out", "/proc/actlab-run")
    one_line(code, err, 1, "/proc/actlab-run")
    code, _, err = run_cli("plot", "relu", "-o", "/proc/actlab.png")
    one_line(code, err, 1, "/proc/actlab.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_one_line(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = compare(data, "--out", locked / "run")
        one_line(code, err, 1, "Permission denied", str(locked / "run"))
        run = write_run(tmp_path / "done", seeds=(0,))
        code, _, err = run_cli("report", run, "-o", locked / "r.html")
        one_line(code, err, 1, "Permission denied")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("name", [store.LOCK_FILE, store.METRICS_FILE, store.CHECKPOINT_FILE])
def test_a_directory_where_a_run_file_belongs_is_one_line(data, tmp_path, name):
    run = tmp_path / "run"
    assert compare(data, "--out", run)[0] == 0
    target = run / name
    target.unlink(missing_ok=True)  # run.lock: removed when the run ended
    target.mkdir()
    code, _, err = compare(data, "--out", run)
    assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err
    assert str(target) in err


# --- damaged run directories: refused before training ---------------------------------------


def finished_run(data: str, path: Path) -> Path:
    assert compare(data, "--out", path)[0] == 0
    return path


def test_a_checkpoint_without_its_keys_is_refused(data, tmp_path):
    run = finished_run(data, tmp_path / "run")
    torch.save({"schema": 1, "something": 1}, run / store.CHECKPOINT_FILE)
    code, _, err = compare(data, "--out", run)
    one_line(code, err, 2, "lacks depth_index, epoch, engine", "delete it to restart")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(schema=99), ["schema version 99", "use the actlab version"]),
        (lambda d: d.update(config=[1, 2]), ["'config' is a list, expected a dict"]),
        (lambda d: d.update(members="all"), ["'members' is a str, expected a list"]),
        (lambda d: d["config"].update(epochs="ten"), ["holds an invalid config"]),
        (lambda d: d["config"].update(hidden=None), ["holds an invalid config"]),
    ],
)
def test_a_damaged_config_is_refused_before_training(data, tmp_path, change, words):
    run = finished_run(data, tmp_path / "run")
    document = json.loads((run / store.CONFIG_FILE).read_text())
    change(document)
    (run / store.CONFIG_FILE).write_text(json.dumps(document))
    before = (run / store.CHECKPOINT_FILE).read_bytes()
    code, _, err = compare(data, "--out", run)
    one_line(code, err, 2, *words)
    assert (run / store.CHECKPOINT_FILE).read_bytes() == before
    code, _, err = run_cli("report", run)
    one_line(code, err, 2, *words)


def test_blank_and_garbage_metrics_lines_are_skipped_and_reported(tmp_path):
    run = write_run(tmp_path / "run", seeds=(0, 1), epochs=2)
    lines = (run / store.METRICS_FILE).read_text().splitlines(keepends=True)
    lines.insert(2, "\n")
    lines.insert(4, ",0,relu,zero,0.001,1,0.5,0.8,,,0.5,0.8,1.0,ok\n")
    (run / store.METRICS_FILE).write_text("".join(lines))
    data = store.read_run(run)
    assert len(data.metrics) == len(lines) - 3
    assert data.problems == [
        "metrics.csv: line 3 is blank; skipped it",
        "metrics.csv: line 5 holds a value that is not valid there; skipped it",
    ]
    code, _, err = run_cli("report", run)
    assert code == 0 and "line 3 is blank" in err


def test_binary_metrics_are_one_line(tmp_path):
    run = write_run(tmp_path / "run", seeds=(0,), epochs=2)
    (run / store.METRICS_FILE).write_bytes(b"\xff\xfe\x00binary" * 10)
    code, _, err = run_cli("report", run)
    one_line(code, err, 2, "not UTF-8", "restore the file")


# --- report.md escapes what it takes from names and paths -----------------------------------


def test_report_markdown_escapes_html_and_markdown(tmp_path):
    run = write_run(tmp_path / "run_<img src=x onerror=alert(1)>_[link](x)", seeds=(0, 1))
    html_path = report.write_report(run)
    text = html_path.with_suffix(".md").read_text(encoding="utf-8")
    assert "<img" not in text and "&lt;img" in text
    assert "\\[link\\](x)" in text and "[link](x)" not in text
    assert "run\\_&lt;img" in text
    assert page.md("expr:x*sigmoid(x)|a") == "expr:x\\*sigmoid(x)\\|a"


# --- a closed stdout stops nothing ----------------------------------------------------------


class ClosedAfterOneLine(io.StringIO):
    """A pipe whose reader (`head -1`) leaves after the first line."""

    def write(self, text: str) -> int:
        if "\n" in self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_closed_stdout_does_not_stop_the_study_or_its_report(data, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedAfterOneLine())
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["compare", "--threads", "1", "--seeds", "1", "--dataset", data, "--epochs", "2",
                     "--hidden", "4", "--activations", "relu,tanh", "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0 and err.getvalue() == ""
    assert len(store.read_run(tmp_path / "run").metrics) == 4
    assert (tmp_path / "run" / "report.html").stat().st_size > 0


def test_actlab_show_into_head_exits_quietly():
    process = subprocess.Popen(
        [sys.executable, "-m", "actlab", "show", "leaky_relu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0
    assert stderr == ""


# --- issue 25: data that trained into wrong verdicts, messages ------------------------------


def data_npz(path: Path, x_train, y_train, x_test, y_test) -> str:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "case, words",
    [
        ("float64 beyond float32", ["x_train holds values up to 1e+39, beyond float32"]),
        ("one class", ["the training split holds only class [0]"]),
        ("test classes never trained", ["every test label (3) is a class the training data"]),
    ],
)
def test_data_that_cannot_give_a_verdict_is_one_line(tmp_path, case, words):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 16)), rng.integers(0, 3, 48)
    x_test, y_test = rng.normal(size=(8, 16)), rng.integers(0, 3, 8)
    if case == "float64 beyond float32":
        x[3, 2] = 1e39  # finite in float64, inf in float32: every member diverged
    elif case == "one class":
        y, y_test = np.zeros(48, np.int64), np.zeros(8, np.int64)
    else:
        y_test[:] = 3
    dataset = data_npz(tmp_path / "d.npz", x, y, x_test, y_test)
    code, _, err = compare(dataset, "--out", tmp_path / "run")
    one_line(code, err, 2, *words)


def test_report_into_a_path_under_a_file_names_the_file_not_removing_it(data, tmp_path):
    run = write_run(tmp_path / "done", seeds=(0,))
    blocker = tmp_path / "hostname"
    blocker.write_text("a file\n")
    code, _, err = run_cli("report", run, "-o", blocker / "x.html")
    one_line(code, err, 2, f"{blocker} is a file, not a folder")
    assert "remove" not in err and blocker.read_text() == "a file\n"


def test_an_unreachable_mlflow_server_is_one_line_at_once(tmp_path):
    pytest.importorskip("mlflow")
    run = write_run(tmp_path / "done", seeds=(0,))
    with socket_nobody_listens_on() as port:
        code, _, err = run_cli("export", run, "--mlflow", f"http://127.0.0.1:{port}")
    one_line(code, err, 2, f"no MLflow server reachable at http://127.0.0.1:{port}", "checked for")


@contextlib.contextmanager
def socket_nobody_listens_on():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


def test_ctrl_c_outside_training_says_interrupted(monkeypatch):
    import actlab.cli.main as cli

    def interrupted(args) -> int:
        raise KeyboardInterrupt

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(handler=interrupted)
    code, _, err = run_cli("list")
    assert code == 130 and err == "actlab: interrupted\n"
